package tokenizer

// mergeTable maps a pair of token ids to its merge (rank, merged id): an open-addressing hash
// table with linear probing, about twice as fast as a Go map for this key on the BPE inner loop.
// It is filled once at load and only read afterwards.
type mergeTable struct {
	slots []mergeSlot
	shift uint // 64 - log2(len(slots))
	n     int
}

type mergeSlot struct {
	key uint64 // pairKey + 1; 0 marks an empty slot
	m   merge
}

func newMergeTable(n int) mergeTable {
	bits := uint(4)
	for 1<<bits < 2*n {
		bits++
	}
	return mergeTable{slots: make([]mergeSlot, 1<<bits), shift: 64 - bits}
}

func (t *mergeTable) slot(key uint64) uint64 { return (key * 0x9E3779B97F4A7C15) >> t.shift }

// put sets the merge of a pair, replacing an earlier one.
func (t *mergeTable) put(a, b int32, m merge) {
	k := pairKey(a, b) + 1
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		switch t.slots[i].key {
		case 0:
			t.slots[i] = mergeSlot{k, m}
			t.n++
			return
		case k:
			t.slots[i].m = m
			return
		}
	}
}

// get returns the merge of (a, b).
func (t *mergeTable) get(a, b int32) (merge, bool) {
	k := pairKey(a, b) + 1
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		switch t.slots[i].key {
		case k:
			return t.slots[i].m, true
		case 0:
			return merge{}, false
		}
	}
}

// len is the number of distinct pairs.
func (t *mergeTable) len() int { return t.n }
