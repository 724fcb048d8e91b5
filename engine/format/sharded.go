package format

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"github.com/qwengo/qwengo/engine/tensor"
)

// IndexName is the file name of a sharded checkpoint's index, as Hugging Face writes it.
const IndexName = "model.safetensors.index.json"

// Sharded is a safetensors checkpoint split across files listed by an index
// (model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor: shard file}}).
// It implements Source; each shard is opened once.
type Sharded struct {
	Index  string // path of the index file
	shards []*Safetensors
	infos  []TensorInfo
	byName map[string]int // tensor -> shard
}

// OpenSharded opens an index and every shard it names (each once), and checks that the
// index and the shards agree: every tensor in weight_map is in its shard, and every tensor in
// a shard is mapped to that shard. The Source it returns is a *Sharded.
func OpenSharded(indexPath string) (Source, error) {
	s, err := openSharded(indexPath)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func openSharded(indexPath string) (*Sharded, error) {
	f, err := os.Open(indexPath)
	if err != nil {
		return nil, ioErr("open", indexPath, "", -1, errors.Unwrap(err), "cannot open the index")
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, ioErr("open", indexPath, "", -1, err, "stat")
	}
	if fi.Size() > maxHeader {
		return nil, newErr("open", indexPath, "", -1, "index of %d bytes exceeds the %d-byte limit", fi.Size(), maxHeader)
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxHeader+1))
	if err != nil {
		return nil, ioErr("open", indexPath, "", -1, err, "reading the index")
	}
	if i := invalidUTF8(raw); i >= 0 {
		return nil, newErr("open", indexPath, "", int64(i), "index is not valid UTF-8")
	}
	weightMap := map[string]string{}
	var order []string // shard names in first-seen order
	found := false
	err = eachMember("open", indexPath, "index", raw, 0, func(key string, val json.RawMessage, _, valAt int64) error {
		if key != "weight_map" {
			return nil
		}
		found = true
		return eachMember("open", indexPath, "weight_map", val, valAt, func(name string, v json.RawMessage, at, _ int64) error {
			var shard string
			if err := json.Unmarshal(v, &shard); err != nil {
				return newErr("open", indexPath, name, at, "weight_map value %s is not a file name", truncate(v, 80))
			}
			if !filepath.IsLocal(shard) {
				return newErr("open", indexPath, name, at, "shard name %q leaves the checkpoint directory", shard)
			}
			weightMap[name] = shard // eachMember rejects a name listed twice
			order = append(order, shard)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, newErr("open", indexPath, "", -1, "not a safetensors index: no weight_map")
	}
	if len(weightMap) == 0 {
		return nil, newErr("open", indexPath, "", -1, "weight_map is empty")
	}
	names := map[string]bool{}
	var shardNames []string
	for _, n := range order {
		if !names[n] {
			names[n] = true
			shardNames = append(shardNames, n)
		}
	}
	sort.Strings(shardNames)
	dir := filepath.Dir(indexPath)
	s := &Sharded{Index: indexPath, byName: map[string]int{}}
	shardIdx := map[string]int{}
	for _, n := range shardNames {
		st, err := openSafetensors(filepath.Join(dir, n))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("%w (shard of %s)", err, indexPath)
		}
		shardIdx[n] = len(s.shards)
		s.shards = append(s.shards, st)
	}
	for name, n := range weightMap {
		if _, ok := s.shards[shardIdx[n]].byName[name]; !ok {
			s.Close()
			return nil, newErr("open", indexPath, name, -1, "listed in weight_map under %s, but that shard has no such tensor", n)
		}
	}
	for i, st := range s.shards {
		for _, ti := range st.infos {
			n, listed := weightMap[ti.Name]
			switch {
			case !listed:
				s.Close()
				return nil, newErr("open", st.Path, ti.Name, ti.Offset, "tensor is not listed in the index %s", indexPath)
			case shardIdx[n] != i:
				s.Close()
				return nil, newErr("open", st.Path, ti.Name, ti.Offset, "tensor is also stored here, but the index %s maps it to %s", indexPath, n)
			}
			s.byName[ti.Name] = i
			s.infos = append(s.infos, ti)
		}
	}
	return s, nil
}

// Tensors lists the tensors shard by shard (shards in name order), each in storage order.
func (s *Sharded) Tensors() []TensorInfo { return copyInfos(s.infos) }

// Read reads one tensor from its shard.
func (s *Sharded) Read(name string) (*tensor.Host, error) {
	i, ok := s.byName[name]
	if !ok {
		return nil, newErr("read", s.Index, name, -1, "no such tensor in the checkpoint")
	}
	return s.shards[i].Read(name)
}

// Metadata returns the __metadata__ map of the first shard (Hugging Face writes the same map,
// {"format": "pt"}, into every shard); nil when absent.
func (s *Sharded) Metadata() map[string]string {
	if len(s.shards) == 0 {
		return nil
	}
	return s.shards[0].Metadata()
}

// Shards returns the paths of the shard files in name order.
func (s *Sharded) Shards() []string {
	out := make([]string, len(s.shards))
	for i, st := range s.shards {
		out[i] = st.Path
	}
	return out
}

// Close closes every shard and returns the first error.
func (s *Sharded) Close() error {
	var first error
	for _, st := range s.shards {
		if err := st.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// shardFile matches the shard names WriteSharded produces (and Hugging Face uses).
var shardFile = regexp.MustCompile(`^model-[0-9]{5,}-of-[0-9]{5,}\.safetensors$`)

// WriteSharded writes tensors, in order, into Hugging Face shards
// dir/model-0000i-of-0000n.safetensors of at most maxShardBytes of tensor data each (a tensor
// larger than that gets a shard of its own), then dir/model.safetensors.index.json
// ({"metadata": {"total_size": bytes}, "weight_map": {...}}). metadata goes into every shard's
// __metadata__. Each file is written atomically and the index last; afterwards shard files of
// an earlier export that the new index does not name (model-*-of-*.safetensors) are removed,
// as transformers' save_pretrained does.
func WriteSharded(dir string, tensors []*tensor.Host, maxShardBytes int64, metadata map[string]string) error {
	infos, err := hostInfos(filepath.Join(dir, IndexName), tensors)
	if err != nil {
		return err
	}
	return WriteShardedFrom(dir, infos, func(i int) (*tensor.Host, error) { return tensors[i], nil }, maxShardBytes, metadata)
}

// WriteShardedFrom is WriteSharded with tensors supplied one at a time by read(i), as in
// WriteSafetensorsFrom.
func WriteShardedFrom(dir string, infos []TensorInfo, read func(i int) (*tensor.Host, error), maxShardBytes int64, metadata map[string]string) error {
	index := filepath.Join(dir, IndexName)
	if maxShardBytes <= 0 {
		return newErr("write", index, "", -1, "maxShardBytes must be positive, got %d", maxShardBytes)
	}
	if len(infos) == 0 {
		return newErr("write", index, "", -1, "no tensors to write")
	}
	infos = copyInfos(infos)
	seen := map[string]int{}
	for i := range infos {
		ti := &infos[i]
		if err := checkWriteName(index, ti.Name, seen, i); err != nil {
			return err
		}
		if ti.DType.Size() == 0 {
			return newErr("write", index, ti.Name, -1, "invalid dtype %v", ti.DType)
		}
		size, err := shapeBytes(ti.Shape, ti.DType.Size())
		if err != nil {
			return newErr("write", index, ti.Name, -1, "%v", err)
		}
		ti.Size = size
	}
	// Greedy split in order: start a new shard when the next tensor would overflow this one.
	var bounds []int // start index of each shard
	var cur, total int64
	for i, ti := range infos {
		if i == 0 || (cur > 0 && cur+ti.Size > maxShardBytes) {
			bounds = append(bounds, i)
			cur = 0
		}
		cur += ti.Size
		total += ti.Size
	}
	bounds = append(bounds, len(infos))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ioErr("write", dir, "", -1, err, "cannot create the directory")
	}
	n := len(bounds) - 1
	weightMap := map[string]string{}
	written := map[string]bool{}
	for k := 0; k < n; k++ {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, n)
		a, b := bounds[k], bounds[k+1]
		err := WriteSafetensorsFrom(filepath.Join(dir, name), infos[a:b], func(j int) (*tensor.Host, error) { return read(a + j) }, metadata)
		if err != nil {
			return err
		}
		for _, ti := range infos[a:b] {
			weightMap[ti.Name] = name
		}
		written[name] = true
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}); err != nil {
		return ioErr("write", index, "", -1, err, "encoding the index")
	}
	if err := WriteFileAtomic(index, buf.Bytes()); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // the checkpoint is complete; stale shards merely stay
	}
	for _, e := range entries {
		if shardFile.MatchString(e.Name()) && !written[e.Name()] && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return ioErr("write", filepath.Join(dir, e.Name()), "", -1, err, "removing a stale shard")
			}
		}
	}
	return nil
}
