package format

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

// FuzzSafetensorsHeader feeds arbitrary headers (with a possibly wrong length field and any
// amount of data) to the parser. It must never panic or allocate more than the input; an
// accepted file must read back completely and survive a write/parse round trip unchanged.
func FuzzSafetensorsHeader(f *testing.F) {
	dir := f.TempDir()
	for i, ts := range [][]*tensor.Host{
		{mkHost("a", tensor.F32, 2, 3), mkHost("b", tensor.BF16, 4), mkHost("s", tensor.F8E4M3)},
		{mkHost("w.weight", tensor.U8, 4, 8), mkHost("w.weight_scale", tensor.F8E4M3, 4, 1), mkHost("w.weight_scale_2", tensor.F32)},
		{mkHost("z", tensor.I64, 0, 3), mkHost("y", tensor.Bool, 3)},
		nil,
	} {
		p := filepath.Join(dir, "seed.safetensors")
		if err := WriteSafetensors(p, ts, map[string]string{"format": "pt"}); err != nil {
			f.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		n := binary.LittleEndian.Uint64(b)
		f.Add(b[8:8+n], int8(0), uint16(len(b)-8-int(n)))
		f.Add(b[8:8+n], int8(i-2), uint16(0))
	}
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), int8(0), uint16(8))
	f.Add([]byte(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`), int8(0), uint16(4))
	f.Add([]byte(`{"__metadata__":{"k":"v"}}`), int8(0), uint16(0))
	f.Fuzz(func(t *testing.T, header []byte, lenDelta int8, dataLen uint16) {
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, uint64(int64(len(header))+int64(lenDelta)))
		b.Write(header)
		b.Write(make([]byte, dataLen))
		file := b.Bytes()
		s, err := parseSafetensors("f.safetensors", bytes.NewReader(file), int64(len(file)))
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		infos := s.Tensors()
		var hosts []*tensor.Host
		for _, ti := range infos {
			if ti.Offset < 8 || ti.Offset+ti.Size > int64(len(file)) {
				t.Fatalf("%s: [%d, %d) outside the %d-byte file", ti.Name, ti.Offset, ti.Offset+ti.Size, len(file))
			}
			h, err := s.Read(ti.Name)
			if err != nil {
				t.Fatalf("validated header but read failed: %v", err)
			}
			hosts = append(hosts, h)
		}
		// Round trip through the writer.
		again, err := safetensorsHeader("g", copyInfos(infos), s.metadata)
		if err != nil {
			t.Fatalf("cannot re-write an accepted file: %v", err)
		}
		var out bytes.Buffer
		if err := writeSafetensorsBody(&out, "g", again, infos, func(i int) (*tensor.Host, error) { return hosts[i], nil }); err != nil {
			t.Fatal(err)
		}
		s2, err := parseSafetensors("g", bytes.NewReader(out.Bytes()), int64(out.Len()))
		if err != nil {
			t.Fatalf("re-written file rejected: %v", err)
		}
		if len(s2.infos) != len(infos) || len(s2.metadata) != len(s.metadata) {
			t.Fatalf("round trip: %d tensors, want %d", len(s2.infos), len(infos))
		}
		for i, ti := range infos {
			h, err := s2.Read(ti.Name)
			if err != nil || h.DType != ti.DType || !slices.Equal(h.Shape, ti.Shape) || !bytes.Equal(h.Data, hosts[i].Data) {
				t.Fatalf("round trip changed %s: %v", ti.Name, err)
			}
		}
	})
}

// FuzzDat feeds arbitrary bytes to the .dat parser. It must never panic or allocate more than
// the input allows; an accepted file must read back completely and be reproduced byte for byte
// by the writer.
func FuzzDat(f *testing.F) {
	good, _, _ := datBytes(seedSpecs())
	f.Add(good)
	small, _, _ := datBytes(seedSpecs()[:6])
	f.Add(small)
	f.Add([]byte{1, 1, 'k', 6, 1, 2, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40})
	f.Add([]byte{0})
	f.Add([]byte{1, 1, 'k', 0x86, 0x00, 0, 0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 12))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDat("f.dat", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		var total int64
		for i, e := range d.Entries {
			p, err := d.ReadEntry(i)
			if err != nil {
				t.Fatalf("accepted file, but entry %d fails: %v", i, err)
			}
			total += int64(len(p))
			if e.Offset+e.Size > int64(len(data)) {
				t.Fatalf("entry %d beyond the file", i)
			}
		}
		if total > int64(len(data)) {
			t.Fatalf("payloads total %d bytes in a %d-byte file", total, len(data))
		}
		if err := checkDatEntries("o.dat", d.Entries); err != nil {
			t.Fatalf("the writer rejects an accepted file: %v", err)
		}
		var back bytes.Buffer
		if err := writeDat(&back, "o.dat", d.Entries, d.ReadEntry); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Bytes(), data) {
			t.Fatal("accepted file does not round-trip byte for byte")
		}
	})
}
