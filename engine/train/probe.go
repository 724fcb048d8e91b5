package train

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
)

// ProbeSample is one phase mark. The first four fields are the seed project's
// (train-step-vram-onestep.json), so its tooling reads our reports; the rest are ours.
type ProbeSample struct {
	TimestampUtc   string           `json:"TimestampUtc"`
	Phase          string           `json:"Phase"`
	PidMemoryMiB   int64            `json:"PidMemoryMiB"`
	TotalMemoryMiB int64            `json:"TotalMemoryMiB"`
	HostRSSMiB     int64            `json:"HostRssMiB"`
	Seconds        float64          `json:"Seconds"`
	DeviceBytes    map[string]int64 `json:"DeviceBytes,omitempty"`
	PeakBytes      int64            `json:"PeakBytes"`
}

// Probe records time and memory per phase of a training step.
type Probe struct {
	Pid        int           `json:"Pid"`
	CreatedUtc string        `json:"CreatedUtc"`
	Device     string        `json:"Device"`
	Samples    []ProbeSample `json:"Samples"`
	start      time.Time
	mem        func() backend.MemStats
}

// NewProbe starts a probe; mem reports the engine's memory (nil: host memory only).
func NewProbe(device string, mem func() backend.MemStats) *Probe {
	p := &Probe{Pid: os.Getpid(), Device: device, start: time.Now(), mem: mem}
	p.Mark("start")
	return p
}

// Mark records a phase.
func (p *Probe) Mark(phase string) {
	now := time.Now()
	s := ProbeSample{TimestampUtc: now.UTC().Format(time.RFC3339Nano), Phase: phase, Seconds: now.Sub(p.start).Seconds(), HostRSSMiB: hostRSS() >> 20}
	if p.mem != nil {
		m := p.mem()
		s.DeviceBytes = map[string]int64{}
		for c, b := range m.InUse {
			if b > 0 {
				s.DeviceBytes[backend.Category(c).String()] = b
			}
		}
		s.PeakBytes = m.Peak
		s.PidMemoryMiB = m.Used() >> 20
		s.TotalMemoryMiB = s.PidMemoryMiB
	}
	if p.mem == nil || s.PidMemoryMiB == 0 {
		// On the CPU the process's memory is the engine's memory.
		s.PidMemoryMiB, s.TotalMemoryMiB = s.HostRSSMiB, s.HostRSSMiB
	}
	p.Samples = append(p.Samples, s)
}

// MarkAt records a phase that ended at time at, measured by the engine after the fact (the
// phases of a devtrain step): its peak bytes since the step began stand for the memory then, the
// host RSS is read now.
func (p *Probe) MarkAt(phase string, at time.Time, peak int64) {
	mib := peak >> 20
	rss := hostRSS() >> 20
	if mib == 0 {
		mib = rss
	}
	p.Samples = append(p.Samples, ProbeSample{TimestampUtc: at.UTC().Format(time.RFC3339Nano), Phase: phase,
		PidMemoryMiB: mib, TotalMemoryMiB: mib, HostRSSMiB: rss, Seconds: at.Sub(p.start).Seconds(), PeakBytes: peak})
}

// Write saves the report as JSON atomically.
func (p *Probe) Write(path string) error {
	p.CreatedUtc = time.Now().UTC().Format(time.RFC3339Nano)
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return format.WriteFileAtomic(path, append(b, '\n'))
}

// hostRSS reads the resident set size from /proc (0 where unavailable).
func hostRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
