package formats

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Standard file names of a Hugging Face safetensors checkpoint.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// maxIndexSize bounds the index JSON read into memory (real ones are a few hundred KiB).
const maxIndexSize = 100 << 20

// Index is a parsed model.safetensors.index.json.
type Index struct {
	TotalSize int64             // metadata.total_size (0 when absent)
	WeightMap map[string]string // tensor name → shard file name (relative to the checkpoint directory)
	Metadata  map[string]any    // the whole "metadata" object (numbers as json.Number)
}

// Checkpoint is an opened safetensors checkpoint: a directory with model.safetensors, or
// with model.safetensors.index.json and its shards, or a single .safetensors file path
// (or an index .json path). Opening reads headers only; tensor data is read on demand with
// positioned reads, so a Checkpoint may be used from several goroutines at once.
type Checkpoint struct {
	Dir      string            // directory holding the files
	Files    []string          // shard paths, in index order (sorted file names); one path when unsharded
	Metadata map[string]string // __metadata__ of the files merged (the first file in Files wins a conflict)
	Index    *Index            // nil when unsharded

	tensors []TensorInfo // sorted by name
	byName  map[string]int
	handles map[string]*os.File
}

// Open opens a checkpoint and validates every header (and the index, when sharded)
// without reading tensor data. Which file is used in a directory follows transformers:
// model.safetensors when present, else model.safetensors.index.json.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if st.IsDir() {
		single := filepath.Join(path, SingleFileName)
		if fileExists(single) {
			return openFiles(path, []string{single}, nil)
		}
		index := filepath.Join(path, IndexFileName)
		if fileExists(index) {
			return openIndexed(index)
		}
		return nil, fmt.Errorf("open checkpoint %s: no %s or %s in the directory", path, SingleFileName, IndexFileName)
	}
	if strings.HasSuffix(path, ".json") {
		return openIndexed(path)
	}
	return openFiles(filepath.Dir(path), []string{path}, nil)
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

// openIndexed reads and checks the index, then opens its shards.
func openIndexed(indexPath string) (*Checkpoint, error) {
	idx, err := readIndex(indexPath)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(indexPath)
	names := make([]string, 0, 4)
	seen := make(map[string]bool)
	for _, f := range idx.WeightMap {
		if !seen[f] {
			seen[f] = true
			names = append(names, f)
		}
	}
	slices.Sort(names)
	files := make([]string, len(names))
	for i, n := range names {
		files[i] = filepath.Join(dir, n)
	}
	return openFiles(dir, files, idx)
}

func readIndex(path string) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", path, err)
	}
	if len(data) > maxIndexSize {
		return nil, formatErr(path, "", "index is larger than %d bytes", maxIndexSize)
	}
	return parseIndex(data, path)
}

func parseIndex(data []byte, path string) (*Index, error) {
	var raw struct {
		Metadata  json.RawMessage `json:"metadata"`
		WeightMap json.RawMessage `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, formatErr(path, "", "index JSON: %v", err)
	}
	idx := &Index{}
	if len(raw.WeightMap) == 0 || raw.WeightMap[0] != '{' {
		return nil, formatErr(path, "", "index has no weight_map object")
	}
	if err := json.Unmarshal(raw.WeightMap, &idx.WeightMap); err != nil {
		return nil, formatErr(path, "", "index weight_map: want an object of file names: %v", err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, formatErr(path, "", "index weight_map is empty")
	}
	for name, file := range idx.WeightMap {
		if err := checkShardName(file); err != nil {
			return nil, formatErr(path, name, "weight_map file %q: %v", file, err)
		}
	}
	if len(raw.Metadata) > 0 && string(raw.Metadata) != "null" {
		dec := json.NewDecoder(strings.NewReader(string(raw.Metadata)))
		dec.UseNumber()
		if err := dec.Decode(&idx.Metadata); err != nil || idx.Metadata == nil {
			return nil, formatErr(path, "", "index metadata is not an object")
		}
		if ts, ok := idx.Metadata["total_size"]; ok {
			n, isNum := ts.(json.Number)
			v, err := n.Int64()
			if !isNum || err != nil || v < 0 {
				return nil, formatErr(path, "", "index metadata.total_size %v is not a non-negative integer", ts)
			}
			idx.TotalSize = v
		}
	}
	return idx, nil
}

// checkShardName confines an index's shard file name to the checkpoint directory:
// a plain file name, no separators, not absolute, not "." or "..".
func checkShardName(name string) error {
	switch {
	case name == "":
		return errors.New("empty file name")
	case strings.ContainsAny(name, `/\`):
		return errors.New("file name contains a path separator: shards must sit beside the index")
	case filepath.IsAbs(name), name == ".", name == "..", !filepath.IsLocal(name):
		return errors.New("file name escapes the checkpoint directory")
	case strings.ContainsRune(name, 0):
		return errors.New("file name contains a NUL byte")
	}
	return nil
}

// openFiles opens and validates the given safetensors files and, when idx is not nil,
// cross-checks them against it.
func openFiles(dir string, files []string, idx *Index) (_ *Checkpoint, err error) {
	c := &Checkpoint{Dir: dir, Files: files, Index: idx, handles: make(map[string]*os.File, len(files)), byName: make(map[string]int)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	headers := make([]*fileHeader, len(files))
	for i, path := range files {
		f, err := os.Open(path)
		if err != nil {
			if idx != nil && errors.Is(err, fs.ErrNotExist) {
				return nil, formatErr(path, "", "shard named in the index is missing (%d tensors map to it)", countMapped(idx, filepath.Base(path)))
			}
			return nil, fmt.Errorf("open checkpoint: %w", err)
		}
		c.handles[path] = f
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("open checkpoint: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, formatErr(path, "", "not a regular file")
		}
		if headers[i], err = readHeader(f, st.Size(), path); err != nil {
			return nil, err
		}
	}
	owner := make(map[string]string) // tensor → file holding it
	for i, h := range headers {
		path := files[i]
		for k, v := range h.metadata {
			if c.Metadata == nil {
				c.Metadata = make(map[string]string)
			}
			if _, ok := c.Metadata[k]; !ok {
				c.Metadata[k] = v
			}
		}
		for _, t := range h.tensors {
			if other, dup := owner[t.Name]; dup {
				return nil, formatErr(path, t.Name, "also present in shard %s: a tensor must live in one shard", other)
			}
			owner[t.Name] = path
			c.tensors = append(c.tensors, t)
		}
	}
	if idx != nil {
		if err := crossCheckIndex(idx, owner, filepath.Join(dir, IndexFileName)); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(c.tensors, func(a, b TensorInfo) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range c.tensors {
		c.byName[t.Name] = i
	}
	return c, nil
}

// crossCheckIndex verifies that the index and the shard headers name the same tensors
// in the same files.
func crossCheckIndex(idx *Index, owner map[string]string, indexPath string) error {
	names := make([]string, 0, len(owner))
	for name := range owner {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		path := owner[name]
		want, ok := idx.WeightMap[name]
		if !ok {
			return formatErr(path, name, "present in the shard but not in the index weight_map of %s", indexPath)
		}
		if want != filepath.Base(path) {
			return formatErr(path, name, "present in the shard, but %s maps it to %s", indexPath, want)
		}
	}
	var missing []string
	for name := range idx.WeightMap {
		if _, ok := owner[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	listed := missing[:min(len(missing), 5)]
	more := ""
	if len(missing) > len(listed) {
		more = fmt.Sprintf(" and %d more", len(missing)-len(listed))
	}
	return formatErr(filepath.Join(filepath.Dir(indexPath), idx.WeightMap[missing[0]]), missing[0],
		"named in the index %s but absent from this shard (absent tensors: %s%s)", indexPath, strings.Join(listed, ", "), more)
}

func countMapped(idx *Index, file string) int {
	n := 0
	for _, f := range idx.WeightMap {
		if f == file {
			n++
		}
	}
	return n
}

// Tensors lists every tensor, sorted by name. The slice and shapes are the caller's.
func (c *Checkpoint) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(c.tensors))
	for i, t := range c.tensors {
		t.Shape = slices.Clone(t.Shape)
		out[i] = t
	}
	return out
}

// Tensor looks a tensor up by name.
func (c *Checkpoint) Tensor(name string) (TensorInfo, bool) {
	i, ok := c.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	t := c.tensors[i]
	t.Shape = slices.Clone(t.Shape)
	return t, true
}

// Len is the number of tensors.
func (c *Checkpoint) Len() int { return len(c.tensors) }

func (c *Checkpoint) lookup(name string) (*TensorInfo, *os.File, error) {
	i, ok := c.byName[name]
	if !ok {
		return nil, nil, fmt.Errorf("checkpoint %s: no tensor %q", c.Dir, name)
	}
	t := &c.tensors[i]
	f := c.handles[t.File]
	if f == nil {
		return nil, nil, fmt.Errorf("checkpoint %s: tensor %q: checkpoint is closed", c.Dir, name)
	}
	return t, f, nil
}

// Section returns a reader over the raw bytes of a tensor, streaming them from disk.
func (c *Checkpoint) Section(name string) (*io.SectionReader, error) {
	t, f, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	return io.NewSectionReader(f, t.Offset, t.Size), nil
}

// Raw reads the raw little-endian bytes of a tensor into a new slice.
func (c *Checkpoint) Raw(name string) ([]byte, error) {
	t, f, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, t.Size)
	if err := readFull(f, t, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// ReadRaw reads the raw bytes of a tensor into dst, which must be exactly its size.
func (c *Checkpoint) ReadRaw(name string, dst []byte) error {
	t, f, err := c.lookup(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Size {
		return fmt.Errorf("read %s: tensor %q: destination has %d bytes, tensor has %d", t.File, name, len(dst), t.Size)
	}
	return readFull(f, t, dst)
}

func readFull(f *os.File, t *TensorInfo, dst []byte) error {
	n, err := f.ReadAt(dst, t.Offset)
	if n == len(dst) {
		return nil
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %s: tensor %q: %d of %d bytes at offset %d (file truncated since open?): %w", t.File, t.Name, n, len(dst), t.Offset, err)
}

// Float32 reads a tensor of any float dtype (F64 F32 F16 BF16 F8_E4M3 F8_E5M2 F8_E8M0)
// and converts it to float32.
func (c *Checkpoint) Float32(name string) ([]float32, error) {
	t, _, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if !t.DType.IsFloat() {
		return nil, fmt.Errorf("read %s: tensor %q: dtype %s is not a float type", t.File, name, t.DType)
	}
	out := make([]float32, t.NumElements())
	if err := c.ReadFloat32(name, out); err != nil {
		return nil, err
	}
	return out, nil
}

// float32ChunkBytes is how much raw data ReadFloat32 reads per step: big enough for
// efficient reads, small enough that converting never needs a second full-size buffer.
const float32ChunkBytes = 1 << 20

// ReadFloat32 reads a float tensor into dst (exactly its element count), converting to
// float32 chunk by chunk, so the raw bytes are never held whole.
func (c *Checkpoint) ReadFloat32(name string, dst []float32) error {
	t, f, err := c.lookup(name)
	if err != nil {
		return err
	}
	if !t.DType.IsFloat() {
		return fmt.Errorf("read %s: tensor %q: dtype %s is not a float type", t.File, name, t.DType)
	}
	if n := t.NumElements(); int64(len(dst)) != n {
		return fmt.Errorf("read %s: tensor %q: destination has %d elements, tensor has %d", t.File, name, len(dst), n)
	}
	size := t.DType.Size()
	per := float32ChunkBytes / size // elements per chunk
	buf := make([]byte, min(len(dst), per)*size)
	for start := 0; start < len(dst); start += per {
		n := min(per, len(dst)-start)
		raw := buf[:n*size]
		part := *t
		part.Offset += int64(start) * int64(size)
		if err := readFull(f, &part, raw); err != nil {
			return err
		}
		if err := DecodeFloat32(t.DType, raw, dst[start:start+n]); err != nil {
			return fmt.Errorf("read %s: tensor %q: %w", t.File, name, err)
		}
	}
	return nil
}

// Close closes the shard files. Readers obtained from Section stop working. Close must
// not run concurrently with other methods.
func (c *Checkpoint) Close() error {
	var errs []error
	for path, f := range c.handles {
		if err := f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", path, err))
		}
		delete(c.handles, path)
	}
	return errors.Join(errs...)
}
