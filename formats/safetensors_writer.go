package formats

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"unicode/utf8"
)

// TensorSpec declares one tensor to be written.
type TensorSpec struct {
	Name  string
	DType DType
	Shape []int64
	// Bytes is the data length. Leave it 0 for a known dtype (it is computed; a non-zero
	// value must agree). For an unknown dtype (Size() == 0) with elements it is required:
	// such tensors are carried through as bytes.
	Bytes int64
}

// WriterOptions tunes a Writer.
type WriterOptions struct {
	// MaxShardSize is the most tensor bytes per file; 0 means one file. Shards are cut
	// like transformers' save_pretrained: a tensor starts a new shard when it would push
	// the current one past MaxShardSize, so a single bigger tensor gets a shard of its own.
	MaxShardSize int64
	// Metadata is the __metadata__ of every file (e.g. {"format": "pt"}); nil writes none.
	Metadata map[string]string
	// Overwrite lets Commit replace a checkpoint already in the directory; its stale
	// files (model.safetensors, the index, model-*-of-*.safetensors) are removed. Without
	// it NewWriter and Commit refuse a directory that already holds any of them.
	Overwrite bool
	// ShardLengths, when set, fixes the shards instead of MaxShardSize: shard k holds the
	// next ShardLengths[k] declared tensors (e.g. to shard an output like its input).
	// The lengths must be positive and add up to the number of tensors.
	ShardLengths []int
}

// Writer streams a safetensors checkpoint to a directory. All tensors are declared up
// front (so each file's header can be written before its data); then each tensor's bytes
// are written in declaration order, one at a time, straight to a temporary file. Commit
// makes the result visible under its final names; Abort removes everything. A Writer is
// not safe for concurrent use.
type Writer struct {
	dir    string
	opts   WriterOptions
	specs  []TensorSpec
	sizes  []int64
	shards []writerShard
	shard  []int // spec index → shard index

	next  int      // index of the next spec to write
	file  *os.File // temporary file of the shard being written, or nil
	temps []string // temporary path per shard ("" until created)
	index string   // temporary path of the index, once created
	state writerState
	err   error // why the writer failed, once it has
	buf   []byte
}

type writerShard struct {
	name        string // final file name
	first, stop int    // spec range [first, stop)
	header      []byte // 8-byte length + JSON
	dataSize    int64
}

type writerState int

const (
	writerOpen writerState = iota
	writerFailed
	writerCommitted
	writerAborted
)

// shardNamePattern matches the files a sharded checkpoint of this layout consists of.
var shardNamePattern = regexp.MustCompile(`^model-[0-9]{5,}-of-[0-9]{5,}\.safetensors$`)

// NewWriter plans a checkpoint in dir (which must exist): it validates the specs, cuts the
// shards and renders their headers. Nothing is written until the first Write.
func NewWriter(dir string, specs []TensorSpec, opts WriterOptions) (*Writer, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("new safetensors writer: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("new safetensors writer: %s is not a directory", dir)
	}
	if opts.MaxShardSize < 0 {
		return nil, fmt.Errorf("new safetensors writer in %s: negative MaxShardSize %d", dir, opts.MaxShardSize)
	}
	for k, v := range opts.Metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("new safetensors writer in %s: metadata %q: not valid UTF-8", dir, k)
		}
	}
	w := &Writer{dir: dir, opts: opts, specs: make([]TensorSpec, len(specs)), sizes: make([]int64, len(specs)), shard: make([]int, len(specs))}
	w.opts.Metadata = cloneMap(opts.Metadata)
	seen := make(map[string]bool, len(specs))
	for i, s := range specs {
		size, err := specSize(s)
		if err != nil {
			return nil, fmt.Errorf("new safetensors writer in %s: tensor %q: %w", dir, s.Name, err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("new safetensors writer in %s: tensor %q declared twice", dir, s.Name)
		}
		seen[s.Name] = true
		s.Shape = slices.Clone(s.Shape)
		if s.Shape == nil {
			s.Shape = []int64{}
		}
		w.specs[i], w.sizes[i] = s, size
	}
	if len(opts.ShardLengths) > 0 {
		total := 0
		for _, n := range opts.ShardLengths {
			if n <= 0 {
				return nil, fmt.Errorf("new safetensors writer in %s: shard lengths %v: each must be positive", dir, opts.ShardLengths)
			}
			total += n
		}
		if total != len(specs) {
			return nil, fmt.Errorf("new safetensors writer in %s: shard lengths add up to %d, %d tensors declared", dir, total, len(specs))
		}
	}
	w.planShards()
	if !opts.Overwrite {
		if existing := w.existingCheckpointFiles(); len(existing) > 0 {
			return nil, fmt.Errorf("new safetensors writer: %s already holds a checkpoint (%s); choose another directory or overwrite", dir, existing[0])
		}
	}
	w.temps = make([]string, len(w.shards))
	return w, nil
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// specSize validates a spec and returns its byte length.
func specSize(s TensorSpec) (int64, error) {
	switch {
	case s.Name == "":
		return 0, errors.New("empty name")
	case s.Name == metadataKey:
		return 0, fmt.Errorf("name %s is reserved", metadataKey)
	case !utf8.ValidString(s.Name):
		return 0, errors.New("name is not valid UTF-8")
	case s.DType == "":
		return 0, errors.New("empty dtype")
	case !utf8.ValidString(string(s.DType)):
		return 0, errors.New("dtype is not valid UTF-8")
	case s.Bytes < 0:
		return 0, fmt.Errorf("negative Bytes %d", s.Bytes)
	}
	for _, d := range s.Shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %v: negative dimension", s.Shape)
		}
	}
	elems, ok := shapeProduct(s.Shape)
	if !ok {
		return 0, fmt.Errorf("shape %v: element count overflows int64", s.Shape)
	}
	size := int64(s.DType.Size())
	if size == 0 {
		if elems > 0 && s.Bytes == 0 {
			return 0, fmt.Errorf("dtype %s has no known element size: give the byte length in Bytes", s.DType)
		}
		if elems == 0 && s.Bytes != 0 {
			return 0, fmt.Errorf("shape %v has no elements but Bytes is %d", s.Shape, s.Bytes)
		}
		return s.Bytes, nil
	}
	if elems > (1<<63-1)/size {
		return 0, fmt.Errorf("shape %v of %s: byte length overflows int64", s.Shape, s.DType)
	}
	if s.Bytes != 0 && s.Bytes != elems*size {
		return 0, fmt.Errorf("shape %v of %s is %d bytes, Bytes says %d", s.Shape, s.DType, elems*size, s.Bytes)
	}
	return elems * size, nil
}

// planShards cuts the declared tensors into files and renders each file's header.
func (w *Writer) planShards() {
	var shards []writerShard
	cur := writerShard{}
	lengths := w.opts.ShardLengths
	for i, size := range w.sizes {
		cut := w.opts.MaxShardSize > 0 && cur.stop > cur.first && cur.dataSize+size > w.opts.MaxShardSize
		if len(lengths) > 0 {
			cut = cur.stop-cur.first == lengths[len(shards)]
		}
		if cut {
			shards = append(shards, cur)
			cur = writerShard{first: i, stop: i}
		}
		cur.stop = i + 1
		cur.dataSize += size
		w.shard[i] = len(shards)
	}
	shards = append(shards, cur)
	for k := range shards {
		sh := &shards[k]
		if len(shards) == 1 {
			sh.name = SingleFileName
		} else {
			sh.name = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, len(shards))
		}
		entries := make([]headerEntry, 0, sh.stop-sh.first)
		pos := int64(0)
		for i := sh.first; i < sh.stop; i++ {
			s := w.specs[i]
			entries = append(entries, headerEntry{name: s.Name, dtype: s.DType, shape: s.Shape, begin: pos, end: pos + w.sizes[i]})
			pos += w.sizes[i]
		}
		sh.header = encodeHeader(w.opts.Metadata, entries)
	}
	w.shards = shards
}

// Shards lists the planned tensor names of each file, in file order.
func (w *Writer) Shards() [][]string {
	out := make([][]string, len(w.shards))
	for k, sh := range w.shards {
		names := make([]string, 0, sh.stop-sh.first)
		for i := sh.first; i < sh.stop; i++ {
			names = append(names, w.specs[i].Name)
		}
		out[k] = names
	}
	return out
}

// FileNames lists the final file names Commit will produce (shards, then the index when sharded).
func (w *Writer) FileNames() []string {
	var out []string
	for _, sh := range w.shards {
		out = append(out, sh.name)
	}
	if len(w.shards) > 1 {
		out = append(out, IndexFileName)
	}
	return out
}

// TotalSize is the sum of all tensors' byte lengths (the index's total_size).
func (w *Writer) TotalSize() int64 {
	var n int64
	for _, s := range w.sizes {
		n += s
	}
	return n
}

func (w *Writer) usable(op string) error {
	switch w.state {
	case writerFailed:
		return fmt.Errorf("safetensors writer in %s: %s after an earlier failure: %w", w.dir, op, w.err)
	case writerCommitted:
		return fmt.Errorf("safetensors writer in %s: %s after Commit", w.dir, op)
	case writerAborted:
		return fmt.Errorf("safetensors writer in %s: %s after Abort", w.dir, op)
	}
	return nil
}

func (w *Writer) fail(err error) error {
	w.state, w.err = writerFailed, err
	return err
}

// checkNext verifies that name is the next declared tensor and returns its index.
func (w *Writer) checkNext(name string) (int, error) {
	if err := w.usable("write " + name); err != nil {
		return 0, err
	}
	if w.next >= len(w.specs) {
		return 0, fmt.Errorf("safetensors writer in %s: tensor %q: all %d declared tensors are already written", w.dir, name, len(w.specs))
	}
	if want := w.specs[w.next].Name; name != want {
		if _, declared := w.shardIndexOf(name); !declared {
			return 0, fmt.Errorf("safetensors writer in %s: tensor %q was not declared", w.dir, name)
		}
		return 0, fmt.Errorf("safetensors writer in %s: tensor %q written out of order: the next declared tensor is %q", w.dir, name, want)
	}
	return w.next, nil
}

func (w *Writer) shardIndexOf(name string) (int, bool) {
	for i, s := range w.specs {
		if s.Name == name {
			return w.shard[i], true
		}
	}
	return 0, false
}

// Write copies the next declared tensor's bytes from r, which must yield exactly its byte
// length (a short reader or one with bytes left over is an error; the check for leftovers
// reads one byte past the end).
func (w *Writer) Write(name string, r io.Reader) error {
	i, err := w.checkNext(name)
	if err != nil {
		return err
	}
	f, err := w.shardFile(i)
	if err != nil {
		return err
	}
	size := w.sizes[i]
	// A file region (an *os.File behind an io.LimitedReader of exactly the tensor's
	// size) is copied by the kernel (copy_file_range), never through user space.
	if lr, ok := r.(*io.LimitedReader); ok && lr.N == size {
		if _, isFile := lr.R.(*os.File); isFile {
			n, err := f.ReadFrom(lr)
			if err != nil {
				return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: copy: %w", f.Name(), name, err))
			}
			if n != size {
				return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: reader ended after %d of %d bytes", f.Name(), name, n, size))
			}
			return w.finishTensor(i)
		}
	}
	if w.buf == nil {
		w.buf = make([]byte, 1<<20)
	}
	for done := int64(0); done < size; {
		chunk := w.buf[:min(int64(len(w.buf)), size-done)]
		n, err := io.ReadFull(r, chunk)
		if n > 0 {
			if _, werr := f.Write(chunk[:n]); werr != nil {
				return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: %w", f.Name(), name, werr))
			}
		}
		done += int64(n)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: reader ended after %d of %d bytes", f.Name(), name, done, size))
			}
			return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: read source: %w", f.Name(), name, err))
		}
	}
	var extra [1]byte
	switch _, err := io.ReadFull(r, extra[:]); {
	case err == nil:
		return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: reader has more than the declared %d bytes", f.Name(), name, size))
	case !errors.Is(err, io.EOF):
		return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: read source: %w", f.Name(), name, err))
	}
	return w.finishTensor(i)
}

// WriteBytes writes the next declared tensor from b, which must be exactly its byte length.
// A wrong name or length is refused before anything is written.
func (w *Writer) WriteBytes(name string, b []byte) error {
	i, err := w.checkNext(name)
	if err != nil {
		return err
	}
	if int64(len(b)) != w.sizes[i] {
		return fmt.Errorf("safetensors writer in %s: tensor %q: %d bytes given, %s %v needs %d", w.dir, name, len(b), w.specs[i].DType, w.specs[i].Shape, w.sizes[i])
	}
	f, err := w.shardFile(i)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		return w.fail(fmt.Errorf("safetensors writer: %s: tensor %q: %w", f.Name(), name, err))
	}
	return w.finishTensor(i)
}

// shardFile returns the temporary file of spec i's shard, creating it (with its header)
// when i is the shard's first tensor.
func (w *Writer) shardFile(i int) (*os.File, error) {
	k := w.shard[i]
	if w.file != nil {
		return w.file, nil
	}
	if err := w.createShard(k); err != nil {
		return nil, err
	}
	return w.file, nil
}

func (w *Writer) createShard(k int) error {
	sh := &w.shards[k]
	f, err := os.CreateTemp(w.dir, "."+sh.name+".tmp-*")
	if err != nil {
		return w.fail(fmt.Errorf("safetensors writer: create %s: %w", sh.name, err))
	}
	w.temps[k] = f.Name()
	w.file = f
	if err := f.Chmod(0o644); err != nil {
		return w.fail(fmt.Errorf("safetensors writer: %s: %w", f.Name(), err))
	}
	if _, err := f.Write(sh.header); err != nil {
		return w.fail(fmt.Errorf("safetensors writer: %s: write header: %w", f.Name(), err))
	}
	return nil
}

// finishTensor advances past spec i and, at the end of a shard, syncs and closes its file.
func (w *Writer) finishTensor(i int) error {
	w.next = i + 1
	if w.next == w.shards[w.shard[i]].stop {
		return w.closeShard()
	}
	return nil
}

func (w *Writer) closeShard() error {
	f := w.file
	w.file = nil
	startWriteback(f) // made durable in Commit (syncTemps)
	if err := f.Close(); err != nil {
		return w.fail(fmt.Errorf("safetensors writer: close %s: %w", f.Name(), err))
	}
	return nil
}

// existingCheckpointFiles lists files in dir that belong to a safetensors checkpoint.
func (w *Writer) existingCheckpointFiles() []string {
	var found []string
	for _, n := range []string{SingleFileName, IndexFileName} {
		if _, err := os.Lstat(filepath.Join(w.dir, n)); err == nil {
			found = append(found, n)
		}
	}
	entries, _ := os.ReadDir(w.dir)
	for _, e := range entries {
		if shardNamePattern.MatchString(e.Name()) {
			found = append(found, e.Name())
		}
	}
	return found
}

// Commit checks that every declared tensor was written, syncs, and renames the temporary
// files to their final names: model.safetensors when there is one file, else
// model-0000K-of-0000N.safetensors and then model.safetensors.index.json (written last, so
// a reader never sees an index whose shards are not all in place). On failure everything
// this writer created is removed.
func (w *Writer) Commit() error {
	if err := w.usable("Commit"); err != nil {
		return err
	}
	if w.next < len(w.specs) {
		return fmt.Errorf("safetensors writer in %s: Commit with %d of %d tensors unwritten, the next is %q", w.dir, len(w.specs)-w.next, len(w.specs), w.specs[w.next].Name)
	}
	if err := w.commit(); err != nil {
		w.fail(err)
		w.removeOwn()
		return err
	}
	w.state = writerCommitted
	return nil
}

func (w *Writer) commit() error {
	// A checkpoint with no tensors still gets its (header-only) file.
	for k := range w.shards {
		if w.temps[k] == "" {
			if err := w.createShard(k); err != nil {
				return err
			}
			if err := w.closeShard(); err != nil {
				return err
			}
		}
	}
	if err := w.syncTemps(); err != nil {
		return err
	}
	sharded := len(w.shards) > 1
	if sharded {
		if err := w.writeIndexTemp(); err != nil {
			return err
		}
	}
	existing := w.existingCheckpointFiles()
	if len(existing) > 0 && !w.opts.Overwrite {
		return fmt.Errorf("safetensors writer: %s now holds a checkpoint (%s): not replacing it", w.dir, existing[0])
	}
	keep := make(map[string]bool)
	for _, n := range w.FileNames() {
		keep[n] = true
	}
	removeStale := func(names []string) error {
		for _, n := range names {
			if !keep[n] {
				if err := os.Remove(filepath.Join(w.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("safetensors writer: remove stale %s: %w", n, err)
				}
			}
		}
		return nil
	}
	if sharded {
		// Take down whatever a reader would load first, so that no mix of old and new is
		// ever visible; the new index goes up last.
		for _, n := range []string{SingleFileName, IndexFileName} {
			if err := os.Remove(filepath.Join(w.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("safetensors writer: remove stale %s: %w", n, err)
			}
		}
	}
	for k, sh := range w.shards {
		if err := os.Rename(w.temps[k], filepath.Join(w.dir, sh.name)); err != nil {
			return fmt.Errorf("safetensors writer: %w", err)
		}
		w.temps[k] = filepath.Join(w.dir, sh.name) // now ours under its final name
	}
	if err := removeStale(existing); err != nil {
		return err
	}
	if sharded {
		if err := os.Rename(w.index, filepath.Join(w.dir, IndexFileName)); err != nil {
			return fmt.Errorf("safetensors writer: %w", err)
		}
		w.index = ""
	}
	return syncDir(w.dir)
}

func (w *Writer) writeIndexTemp() error {
	type indexFile struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	idx := indexFile{Metadata: map[string]any{"total_size": w.TotalSize()}, WeightMap: make(map[string]string, len(w.specs))}
	for i, s := range w.specs {
		idx.WeightMap[s.Name] = w.shards[w.shard[i]].name
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(idx); err != nil {
		return fmt.Errorf("safetensors writer: encode index: %w", err)
	}
	f, err := os.CreateTemp(w.dir, "."+IndexFileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("safetensors writer: create index: %w", err)
	}
	w.index = f.Name()
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("safetensors writer: write index %s: %w", f.Name(), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("safetensors writer: sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("safetensors writer: sync directory %s: %w", dir, err)
	}
	return nil
}

// removeOwn closes the open file and removes every file this writer created: its
// temporaries and the shards a failed Commit had already renamed.
func (w *Writer) removeOwn() error {
	var errs []error
	if w.file != nil {
		w.file.Close()
		w.file = nil
	}
	for k, p := range w.temps {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		w.temps[k] = ""
	}
	if w.index != "" {
		if err := os.Remove(w.index); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		w.index = ""
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("safetensors writer in %s: clean up: %w", w.dir, err)
	}
	return nil
}

// Abort removes the temporary files; nothing that looks like a checkpoint is left by this
// writer. After a successful Commit it does nothing, so `defer w.Abort()` is safe.
func (w *Writer) Abort() error {
	if w.state == writerCommitted {
		return nil
	}
	if w.state != writerFailed {
		w.state = writerAborted
	}
	return w.removeOwn()
}

// syncTemps makes every written shard durable before any is renamed into
// place, the shards in parallel (their writeback started when each was closed).
func (w *Writer) syncTemps() error {
	errs := make([]error, len(w.temps))
	var wg sync.WaitGroup
	for k, path := range w.temps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(path)
			if err == nil {
				err = f.Sync()
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				errs[k] = fmt.Errorf("safetensors writer: sync %s: %w", path, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
