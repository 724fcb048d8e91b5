//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

// Stamps inside the decode GEMVs (a measurement tool). While a test holds a stamps buffer
// (startGEMVStamps), every gemv_tcp launch whose form has a stamped entry point (gemv_tcp_st.cu,
// GP_ENTRY_ST: the same code plus the stamps; its module loads with the first buffer) runs that
// one instead, and each of its blocks
// records when it started, passed pdl_wait, had x staged, ended warp 0's loop and ended
// (%globaltimer and clock64), with its SM. The timings of one launch alone, or of a launch
// chain, say where a GEMV's time goes inside it — what skip-and-subtract runs could only infer.

// tcpStampRec is a block's record, u64s (gemv_tcp.cuh TCP_ST_REC).
const tcpStampRec = 12

// tcpStamps is the buffer and the launches recorded into it (owner goroutine).
type tcpStamps struct {
	buf      devBuf
	next     int64 // bytes of buf used
	launches []tcpStampLaunch
	dropped  int // launches not stamped: the buffer was full
}

// tcpStampLaunch is one stamped launch: its kernel (unstamped name), grid and place in the buffer.
type tcpStampLaunch struct {
	name   string
	blocks int
	off    int64
}

// tcpBlockStamps is one block's record: times in ns (globaltimer) and cycles (clock64) at its
// start, after pdl_wait, after staging, after warp 0's loop and at its end (0 where the block
// returned before the point), and its SM.
type tcpBlockStamps struct {
	ns, cycles [5]uint64
	sm         int
}

// startGEMVStamps gives the GEMVs a stamps buffer of the given bytes and forgets earlier launches.
func (b *Backend) startGEMVStamps(bytes int64) error {
	return b.do(func() error {
		if err := b.loadLazyPTX("kernels/gemv_tcp_st.ptx"); err != nil {
			return err
		}
		if err := b.grow(&b.stamps.buf, backend.Workspace, bytes, "gemv stamps"); err != nil {
			return err
		}
		b.stamps.next, b.stamps.launches, b.stamps.dropped = 0, nil, 0
		return memsetD8(b.stamps.buf.ptr, 0, b.stamps.buf.bytes)
	})
}

// stopGEMVStamps downloads the stamped launches' records, frees the buffer and returns the
// launches in launch order with their blocks' records, and how many launches found it full.
func (b *Backend) stopGEMVStamps() (launches []tcpStampLaunch, blocks [][]tcpBlockStamps, dropped int, err error) {
	err = b.do(func() error {
		st := &b.stamps
		defer func() {
			if st.buf.ptr != 0 {
				b.free(st.buf.ptr)
			}
			*st = tcpStamps{}
		}()
		if st.next == 0 {
			launches, dropped = st.launches, st.dropped
			return nil
		}
		raw := make([]uint64, st.next/8)
		if err := memcpyDtoH(unsafe.Pointer(&raw[0]), st.buf.ptr, st.next); err != nil {
			return err
		}
		for _, l := range st.launches {
			recs := make([]tcpBlockStamps, l.blocks)
			for i := range recs {
				r := raw[l.off/8+int64(i*tcpStampRec):]
				copy(recs[i].ns[:], r[0:5])
				copy(recs[i].cycles[:], r[5:10])
				recs[i].sm = int(r[10])
			}
			blocks = append(blocks, recs)
		}
		launches, dropped = st.launches, st.dropped
		return nil
	})
	return launches, blocks, dropped, err
}

// tcpStamped returns the stamped entry point of kernel name and its arguments (args plus this
// launch's place in the stamps buffer) while a stamps buffer is held and has room for blocks
// records; else fn and args as they are (owner goroutine).
func (b *Backend) tcpStamped(name string, fn function, blocks int, args []arg) (function, []arg) {
	st := &b.stamps
	sf := b.fns[name+"_st"]
	if st.buf.ptr == 0 || sf == nil {
		return fn, args
	}
	need := int64(blocks * tcpStampRec * 8)
	if st.next+need > st.buf.bytes {
		st.dropped++
		return fn, args
	}
	st.launches = append(st.launches, tcpStampLaunch{name: name, blocks: blocks, off: st.next})
	args = append(append([]arg(nil), args...), ptrArg(st.buf.ptr+devPtr(st.next)))
	st.next += need
	return sf, args
}

// String names a stamped launch.
func (l tcpStampLaunch) String() string { return fmt.Sprintf("%s × %d blocks", l.name, l.blocks) }
