// Stamped copies of the decode's resident GEMV forms (gemv_tcp.cuh, ST): one row, the
// block-merge norm, acc and plain forms and SwiGLU + down with its global merge; five to eight
// rows, the two-pass forms. The same code as gemv_tcp.cu's entry points plus TCP_ST_REC stamps a
// block, launched in their place only while a test holds a stamps buffer (gemv_stamps.go). A
// module of its own, loaded on the first stamps buffer (ptx.go lazyPTXModules).
#include "gemv_tcp.cuh"

GP_ENTRY_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, false, true, _norm_bm)
GP_ENTRY_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, false, true, _acc_bm)
GP_ENTRY_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, false, true, _bm)
GP_ENTRY_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, false, false, _swiacc)
GP_ENTRY_ST(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, true, false, )
GP_ENTRY_ST(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, true, false, _acc)
GP_ENTRY_ST(2, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, true, false, _norm)
GP_ENTRY_ST(2, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, true, false, _swiacc)
GP_ENTRY_CS_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, true, _norm_bm)
GP_ENTRY_CS_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, true, _acc_bm)
GP_ENTRY_CS_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, true, _bm)
GP_ENTRY_CS_ST(1, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, false, _swiacc)
