package formats

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// randomSpecsAndData declares one tensor of every dtype plus edge shapes and fills them
// with seeded random bytes.
func randomSpecsAndData(rng *rand.Rand) ([]TensorSpec, map[string][]byte) {
	specs := []TensorSpec{
		{Name: "f64", DType: F64, Shape: []int64{3, 5}},
		{Name: "f32", DType: F32, Shape: []int64{7}},
		{Name: "f16", DType: F16, Shape: []int64{2, 3, 4}},
		{Name: "bf16", DType: BF16, Shape: []int64{33}},
		{Name: "i64", DType: I64, Shape: []int64{2}},
		{Name: "i32", DType: I32, Shape: []int64{3}},
		{Name: "i16", DType: I16, Shape: []int64{5}},
		{Name: "i8", DType: I8, Shape: []int64{9}},
		{Name: "u64", DType: U64, Shape: []int64{1}},
		{Name: "u32", DType: U32, Shape: []int64{2}},
		{Name: "u16", DType: U16, Shape: []int64{3}},
		{Name: "u8", DType: U8, Shape: []int64{11}},
		{Name: "bool", DType: BOOL, Shape: []int64{4}},
		{Name: "c64", DType: C64, Shape: []int64{2}},
		{Name: "e4m3", DType: F8E4M3, Shape: []int64{6}},
		{Name: "e5m2", DType: F8E5M2, Shape: []int64{6}},
		{Name: "e8m0", DType: F8E8M0, Shape: []int64{2}},
		{Name: "f4.packed", DType: "F4", Shape: []int64{2, 5}, Bytes: 5},
		{Name: "scalar", DType: F32, Shape: []int64{}},
		{Name: "nil-shape scalar", DType: BF16},
		{Name: "empty", DType: F16, Shape: []int64{0, 8}},
		{Name: "naïve \"quoted\" <name>", DType: U8, Shape: []int64{1}},
	}
	data := make(map[string][]byte)
	for _, s := range specs {
		size, _ := specSize(s)
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		data[s.Name] = b
	}
	return specs, data
}

func writeAll(t *testing.T, dir string, specs []TensorSpec, data map[string][]byte, opts WriterOptions) *Writer {
	t.Helper()
	w, err := NewWriter(dir, specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range specs {
		var err error
		if i%2 == 0 {
			err = w.WriteBytes(s.Name, data[s.Name])
		} else { // exercise the streaming path with a reader that returns one byte at a time
			err = w.Write(s.Name, iotest.OneByteReader(bytes.NewReader(data[s.Name])))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return w
}

func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func checkReadBack(t *testing.T, dir string, specs []TensorSpec, data map[string][]byte) *Checkpoint {
	t.Helper()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c.Len() != len(specs) {
		t.Fatalf("read back %d tensors, wrote %d", c.Len(), len(specs))
	}
	for _, s := range specs {
		ti, ok := c.Tensor(s.Name)
		if !ok {
			t.Fatalf("tensor %q missing", s.Name)
		}
		wantShape := s.Shape
		if wantShape == nil {
			wantShape = []int64{}
		}
		if ti.DType != s.DType || !slices.Equal(ti.Shape, wantShape) {
			t.Errorf("%q: read %s %v, wrote %s %v", s.Name, ti.DType, ti.Shape, s.DType, s.Shape)
		}
		raw, err := c.Raw(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, data[s.Name]) {
			t.Errorf("%q: bytes differ", s.Name)
		}
	}
	return c
}

func TestWriterRoundTripEveryDType(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(21, 22)))
	dir := t.TempDir()
	w := writeAll(t, dir, specs, data, WriterOptions{Metadata: map[string]string{"format": "pt", "<&>": "ü"}})
	if got := dirFiles(t, dir); !slices.Equal(got, []string{SingleFileName}) || !slices.Equal(w.FileNames(), got) {
		t.Fatalf("directory holds %q, FileNames %q", got, w.FileNames())
	}
	c := checkReadBack(t, dir, specs, data)
	if c.Metadata["format"] != "pt" || c.Metadata["<&>"] != "ü" {
		t.Errorf("metadata %v", c.Metadata)
	}
	// Header layout: 8-byte length, a multiple of 8, "__metadata__" first, tensors sorted
	// by name, data in declaration order.
	file, err := os.ReadFile(filepath.Join(dir, SingleFileName))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(file[:8])
	hdr := string(file[8 : 8+n])
	if n%8 != 0 || !strings.HasPrefix(hdr, `{"__metadata__":{"<&>":"ü","format":"pt"},"bf16":{`) || strings.TrimRight(hdr, " ") != hdr[:strings.LastIndexByte(hdr, '}')+1] {
		t.Errorf("header %q", hdr)
	}
	var off int64
	for _, s := range specs {
		ti, _ := c.Tensor(s.Name)
		if ti.Offset != int64(8+n)+off {
			t.Errorf("%q at %d, want declaration order offset %d", s.Name, ti.Offset, int64(8+n)+off)
		}
		off += ti.Size
	}
}

func TestWriterSharding(t *testing.T) {
	sizes := map[string]int64{"a": 40, "b": 40, "c": 30, "big": 250, "e": 10, "f": 0, "g": 100, "h": 90}
	order := []string{"a", "b", "c", "big", "e", "f", "g", "h"}
	var specs []TensorSpec
	data := make(map[string][]byte)
	rng := rand.New(rand.NewPCG(31, 32))
	for _, n := range order {
		specs = append(specs, TensorSpec{Name: n, DType: U8, Shape: []int64{sizes[n]}})
		b := make([]byte, sizes[n])
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		data[n] = b
	}
	dir := t.TempDir()
	w, err := NewWriter(dir, specs, WriterOptions{MaxShardSize: 100, Metadata: map[string]string{"format": "pt"}})
	if err != nil {
		t.Fatal(err)
	}
	// a+b = 80 fit; c would make 110; big alone (bigger than the limit); e+f = 10, +g = 110 no;
	// g = 100 exactly fits; h alone.
	want := [][]string{{"a", "b"}, {"c"}, {"big"}, {"e", "f"}, {"g"}, {"h"}}
	if got := w.Shards(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("Shards() = %q, want %q", got, want)
	}
	w.Abort()
	w = writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 100, Metadata: map[string]string{"format": "pt"}})
	wantFiles := []string{"model-00001-of-00006.safetensors", "model-00002-of-00006.safetensors", "model-00003-of-00006.safetensors",
		"model-00004-of-00006.safetensors", "model-00005-of-00006.safetensors", "model-00006-of-00006.safetensors", IndexFileName}
	if got := dirFiles(t, dir); !slices.Equal(got, wantFiles) || !slices.Equal(w.FileNames(), wantFiles) {
		t.Fatalf("directory holds %q, FileNames %q, want %q", got, w.FileNames(), wantFiles)
	}
	index, err := os.ReadFile(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	wantIndex := `{
  "metadata": {
    "total_size": 560
  },
  "weight_map": {
    "a": "model-00001-of-00006.safetensors",
    "b": "model-00001-of-00006.safetensors",
    "big": "model-00003-of-00006.safetensors",
    "c": "model-00002-of-00006.safetensors",
    "e": "model-00004-of-00006.safetensors",
    "f": "model-00004-of-00006.safetensors",
    "g": "model-00005-of-00006.safetensors",
    "h": "model-00006-of-00006.safetensors"
  }
}
`
	if string(index) != wantIndex {
		t.Errorf("index:\n%s\nwant:\n%s", index, wantIndex)
	}
	c := checkReadBack(t, dir, specs, data)
	if c.Index == nil || c.Index.TotalSize != 560 || len(c.Files) != 6 || c.Metadata["format"] != "pt" {
		t.Errorf("Index %+v Files %q Metadata %v", c.Index, c.Files, c.Metadata)
	}
	for k, names := range want {
		for _, n := range names {
			if ti, _ := c.Tensor(n); filepath.Base(ti.File) != wantFiles[k] {
				t.Errorf("%q in %s, want %s", n, ti.File, wantFiles[k])
			}
		}
	}
}

func TestWriterOneShardWhenEverythingFits(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(41, 42)))
	dir := t.TempDir()
	writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 1 << 30})
	if got := dirFiles(t, dir); !slices.Equal(got, []string{SingleFileName}) {
		t.Fatalf("directory holds %q", got)
	}
}

func TestWriterByteIdenticalRewrite(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(51, 52)))
	opts := WriterOptions{MaxShardSize: 64, Metadata: map[string]string{"format": "pt"}}
	a, b := t.TempDir(), t.TempDir()
	writeAll(t, a, specs, data, opts)
	// Rewrite b from a's files, streaming each tensor through Section.
	c, err := Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := NewWriter(b, specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		sec, err := c.Section(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(s.Name, sec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	fa, fb := dirFiles(t, a), dirFiles(t, b)
	if !slices.Equal(fa, fb) || len(fa) < 3 {
		t.Fatalf("files %q vs %q", fa, fb)
	}
	for _, n := range fa {
		x, _ := os.ReadFile(filepath.Join(a, n))
		y, _ := os.ReadFile(filepath.Join(b, n))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two writes of the same input", n)
		}
	}
}

func TestWriterAbortLeavesNothing(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(61, 62)))
	for _, stopAfter := range []int{0, 1, 5, len(specs)} {
		dir := t.TempDir()
		w, err := NewWriter(dir, specs, WriterOptions{MaxShardSize: 48})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range specs[:stopAfter] {
			if err := w.WriteBytes(s.Name, data[s.Name]); err != nil {
				t.Fatal(err)
			}
		}
		if stopAfter > 0 {
			files := dirFiles(t, dir)
			if len(files) == 0 || !strings.HasPrefix(files[0], ".model-00001-of-") || !strings.Contains(files[0], ".safetensors.tmp-") {
				t.Errorf("after %d tensors the directory holds %q; want hidden temporaries", stopAfter, files)
			}
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if files := dirFiles(t, dir); len(files) != 0 {
			t.Errorf("Abort after %d tensors left %q", stopAfter, files)
		}
		if err := w.WriteBytes(specs[0].Name, data[specs[0].Name]); err == nil {
			t.Error("WriteBytes after Abort succeeded")
		}
		if err := w.Commit(); err == nil {
			t.Error("Commit after Abort succeeded")
		}
	}
}

func TestWriterCommitWithMissingTensorFails(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(71, 72)))
	dir := t.TempDir()
	w, err := NewWriter(dir, specs, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs[:len(specs)-1] {
		if err := w.WriteBytes(s.Name, data[s.Name]); err != nil {
			t.Fatal(err)
		}
	}
	last := specs[len(specs)-1].Name
	wantErrNaming(t, w.Commit(), "1 of 22 tensors unwritten", strconv.Quote(last))
	if files := dirFiles(t, dir); slices.Contains(files, SingleFileName) {
		t.Errorf("a failed Commit left %q", files)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if files := dirFiles(t, dir); len(files) != 0 {
		t.Errorf("left %q", files)
	}
}

func TestWriterRefusesBadWrites(t *testing.T) {
	specs := []TensorSpec{{Name: "a", DType: F32, Shape: []int64{4}}, {Name: "b", DType: BF16, Shape: []int64{2}}}
	newW := func() (*Writer, string) {
		dir := t.TempDir()
		w, err := NewWriter(dir, specs, WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Abort() })
		return w, dir
	}
	w, _ := newW()
	wantErrNaming(t, w.WriteBytes("b", make([]byte, 4)), `"b"`, "out of order", `"a"`)
	wantErrNaming(t, w.WriteBytes("zz", make([]byte, 4)), `"zz"`, "not declared")
	wantErrNaming(t, w.WriteBytes("a", make([]byte, 15)), `"a"`, "15 bytes given", "needs 16")
	// Refusals before writing leave the writer usable.
	if err := w.WriteBytes("a", make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBytes("b", make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	wantErrNaming(t, w.WriteBytes("b", make([]byte, 4)), "already written")

	w, _ = newW()
	wantErrNaming(t, w.Write("a", bytes.NewReader(make([]byte, 10))), `"a"`, "reader ended after 10 of 16 bytes")
	wantErrNaming(t, w.WriteBytes("a", make([]byte, 16)), "earlier failure")
	wantErrNaming(t, w.Commit(), "earlier failure")

	w, _ = newW()
	wantErrNaming(t, w.Write("a", bytes.NewReader(make([]byte, 17))), `"a"`, "more than the declared 16 bytes")

	w, _ = newW()
	wantErrNaming(t, w.Write("a", iotest.ErrReader(io.ErrClosedPipe)), `"a"`, "read source", "closed pipe")

	w, dir := newW()
	if err := w.WriteBytes("a", make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBytes("b", make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil || !slices.Equal(dirFiles(t, dir), []string{SingleFileName}) {
		t.Errorf("Abort after Commit: %v, directory %q", err, dirFiles(t, dir))
	}
	wantErrNaming(t, w.Commit(), "after Commit")
}

func TestWriterRefusesBadSpecs(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name     string
		specs    []TensorSpec
		opts     WriterOptions
		fragment string
	}{
		{"empty name", []TensorSpec{{DType: F32, Shape: []int64{1}}}, WriterOptions{}, "empty name"},
		{"reserved name", []TensorSpec{{Name: metadataKey, DType: F32}}, WriterOptions{}, "reserved"},
		{"duplicate", []TensorSpec{{Name: "a", DType: F32}, {Name: "a", DType: F16}}, WriterOptions{}, "declared twice"},
		{"empty dtype", []TensorSpec{{Name: "a", Shape: []int64{1}}}, WriterOptions{}, "empty dtype"},
		{"negative dim", []TensorSpec{{Name: "a", DType: F32, Shape: []int64{2, -1}}}, WriterOptions{}, "negative dimension"},
		{"overflow", []TensorSpec{{Name: "a", DType: F32, Shape: []int64{1 << 40, 1 << 40}}}, WriterOptions{}, "overflows"},
		{"byte overflow", []TensorSpec{{Name: "a", DType: F64, Shape: []int64{1 << 61}}}, WriterOptions{}, "overflows"},
		{"unknown dtype without bytes", []TensorSpec{{Name: "a", DType: "F4", Shape: []int64{4}}}, WriterOptions{}, "Bytes"},
		{"bytes disagree", []TensorSpec{{Name: "a", DType: F32, Shape: []int64{4}, Bytes: 12}}, WriterOptions{}, "Bytes says 12"},
		{"invalid utf-8", []TensorSpec{{Name: "a\xff", DType: F32}}, WriterOptions{}, "UTF-8"},
		{"negative shard size", []TensorSpec{{Name: "a", DType: F32}}, WriterOptions{MaxShardSize: -1}, "MaxShardSize"},
	}
	for _, c := range cases {
		if _, err := NewWriter(dir, c.specs, c.opts); err == nil || !strings.Contains(err.Error(), c.fragment) || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %v, want one naming %s and %q", c.name, err, dir, c.fragment)
		}
	}
	if _, err := NewWriter(filepath.Join(dir, "missing"), nil, WriterOptions{}); err == nil {
		t.Error("NewWriter in a missing directory succeeded")
	}
}

func TestWriterNoTensors(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir, nil, WriterOptions{Metadata: map[string]string{"format": "pt"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Len() != 0 || c.Metadata["format"] != "pt" {
		t.Errorf("%d tensors, metadata %v", c.Len(), c.Metadata)
	}
}

func TestWriterOverwrite(t *testing.T) {
	specs, data := randomSpecsAndData(rand.New(rand.NewPCG(81, 82)))
	dir := t.TempDir()
	writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 40})
	sharded := dirFiles(t, dir)
	if len(sharded) < 4 {
		t.Fatalf("want a sharded checkpoint, got %q", sharded)
	}
	if _, err := NewWriter(dir, specs, WriterOptions{}); err == nil || !strings.Contains(err.Error(), "already holds a checkpoint") {
		t.Errorf("NewWriter over a checkpoint without Overwrite: %v", err)
	}
	// Fewer, bigger shards over more, smaller ones: the stale extra shards go.
	writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 80, Overwrite: true})
	checkReadBack(t, dir, specs, data)
	c, _ := Open(dir)
	var files []string
	for _, f := range c.Files {
		files = append(files, filepath.Base(f))
	}
	c.Close()
	if got := dirFiles(t, dir); !slices.Equal(got, append(files, IndexFileName)) {
		t.Errorf("after overwriting: %q, want %q and the index", got, files)
	}
	// Single file over shards: the index and every shard go.
	writeAll(t, dir, specs, data, WriterOptions{Overwrite: true})
	if got := dirFiles(t, dir); !slices.Equal(got, []string{SingleFileName}) {
		t.Errorf("after overwriting with one file: %q", got)
	}
	// And shards over a single file: model.safetensors goes (transformers would load it first).
	writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 40, Overwrite: true})
	if got := dirFiles(t, dir); !slices.Equal(got, sharded) {
		t.Errorf("after overwriting with shards: %q, want %q", got, sharded)
	}
	checkReadBack(t, dir, specs, data)
	// Files that are not part of a checkpoint are never touched.
	writeFile(t, dir, "config.json", []byte("{}"))
	writeAll(t, dir, specs, data, WriterOptions{Overwrite: true})
	if got := dirFiles(t, dir); !slices.Equal(got, []string{"config.json", SingleFileName}) {
		t.Errorf("after overwriting next to config.json: %q", got)
	}
}

func TestWriterIndexIsValidJSONWithEscapes(t *testing.T) {
	specs := []TensorSpec{{Name: "a<b>&\"c\"", DType: U8, Shape: []int64{8}}, {Name: "é", DType: U8, Shape: []int64{8}}}
	data := map[string][]byte{specs[0].Name: make([]byte, 8), specs[1].Name: make([]byte, 8)}
	dir := t.TempDir()
	writeAll(t, dir, specs, data, WriterOptions{MaxShardSize: 8})
	raw, err := os.ReadFile(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	var idx map[string]map[string]any
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"a<b>&\"c\""`) {
		t.Errorf("index escapes HTML characters: %s", raw)
	}
	checkReadBack(t, dir, specs, data)
}
