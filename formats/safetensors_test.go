package formats

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestOpenValidFile(t *testing.T) {
	dir := t.TempDir()
	file := buildFile(map[string]string{"format": "pt", "note": "x"}, []fileTensor{
		{"w", BF16, []int64{2, 3}, 12}, {"s", F32, []int64{}, 4}, {"z", F16, []int64{0, 7}, 0},
		{"q", F8E4M3, []int64{5}, 5}, {"odd", "F4", []int64{3}, 2}, {"i", I64, []int64{1}, 8},
	})
	path := writeFile(t, dir, "model.safetensors", file)
	for _, open := range []string{dir, path} {
		c, err := Open(open)
		if err != nil {
			t.Fatal(err)
		}
		if c.Dir != dir || !slices.Equal(c.Files, []string{path}) || c.Index != nil {
			t.Errorf("Open(%s): Dir %q Files %q Index %v", open, c.Dir, c.Files, c.Index)
		}
		if c.Metadata["format"] != "pt" || c.Metadata["note"] != "x" || len(c.Metadata) != 2 {
			t.Errorf("metadata %v", c.Metadata)
		}
		var names []string
		for _, ti := range c.Tensors() {
			names = append(names, ti.Name)
		}
		if want := []string{"i", "odd", "q", "s", "w", "z"}; !slices.Equal(names, want) {
			t.Errorf("Tensors() names %q, want %q", names, want)
		}
		s, ok := c.Tensor("s")
		if !ok || s.DType != F32 || len(s.Shape) != 0 || s.NumElements() != 1 || s.Size != 4 || s.File != path {
			t.Errorf("scalar: %+v", s)
		}
		z, _ := c.Tensor("z")
		if z.NumElements() != 0 || z.Size != 0 {
			t.Errorf("zero-size: %+v", z)
		}
		// Offsets are absolute and the bytes are the ones laid out (buildFile's pattern).
		hdrLen := int64(binary.LittleEndian.Uint64(file[:8]))
		w, _ := c.Tensor("w")
		if w.Offset != 8+hdrLen {
			t.Errorf("first tensor offset %d, want %d", w.Offset, 8+hdrLen)
		}
		for _, ti := range c.Tensors() {
			raw, err := c.Raw(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw, file[ti.Offset:ti.Offset+ti.Size]) {
				t.Errorf("Raw(%s) differs from the file bytes", ti.Name)
			}
			sec, err := c.Section(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			streamed, err := io.ReadAll(sec)
			if err != nil || !bytes.Equal(streamed, raw) {
				t.Errorf("Section(%s): %v, bytes equal %v", ti.Name, err, bytes.Equal(streamed, raw))
			}
		}
		f, err := c.Float32("s")
		if err != nil || len(f) != 1 {
			t.Errorf("Float32(scalar) = %v, %v", f, err)
		}
		f, err = c.Float32("z")
		if err != nil || len(f) != 0 {
			t.Errorf("Float32(zero-size) = %v, %v", f, err)
		}
		if _, err := c.Float32("i"); err == nil {
			t.Error("Float32 of an I64 tensor succeeded")
		}
		if _, err := c.Float32("odd"); err == nil {
			t.Error("Float32 of an unknown dtype succeeded")
		}
		if _, err := c.Raw("nope"); err == nil || !strings.Contains(err.Error(), "nope") {
			t.Errorf("Raw of a missing tensor: %v", err)
		}
		if err := c.ReadRaw("w", make([]byte, 11)); err == nil {
			t.Error("ReadRaw into a short buffer succeeded")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Raw("w"); err == nil {
			t.Error("Raw after Close succeeded")
		}
	}
}

func TestOpenFloat32Values(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	want := make([]float32, 64)
	for i := range want {
		want[i] = float32(rng.NormFloat64())
	}
	dir := t.TempDir()
	specs := []TensorSpec{{Name: "b", DType: BF16, Shape: []int64{8, 8}}, {Name: "h", DType: F16, Shape: []int64{64}}, {Name: "d", DType: F64, Shape: []int64{4, 16}}}
	w, err := NewWriter(dir, specs, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		raw := make([]byte, 64*s.DType.Size())
		if err := EncodeFloat32(s.DType, want, raw); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteBytes(s.Name, raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, s := range specs {
		got, err := c.Float32(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		// Relative error bound of the format's rounding: 2^-8 for bf16, 2^-11 for f16, 0 for f64.
		tol := map[DType]float64{BF16: math.Ldexp(1, -8), F16: math.Ldexp(1, -11), F64: 0}[s.DType]
		for i := range want {
			if rel := math.Abs(float64(got[i])-float64(want[i])) / math.Abs(float64(want[i])); rel > tol {
				t.Errorf("%s[%d] = %v, want %v (relative error %.3g > %.3g)", s.Name, i, got[i], want[i], rel, tol)
			}
		}
	}
}

// malformedFiles are single-file checkpoints that Open must refuse, each with a fragment
// of the reason (and the tensor, when there is one) that the error must mention.
var malformedFiles = []struct {
	name     string
	file     []byte
	fragment []string
}{
	{"too short", []byte{1, 2, 3}, []string{"too short"}},
	{"header past end", append(binary.LittleEndian.AppendUint64(nil, 1000), "{}"...), []string{"header length 1000", "truncated"}},
	{"header over limit", append(binary.LittleEndian.AppendUint64(nil, 1<<40), "{}"...), []string{"exceeds"}},
	{"header length zero", binary.LittleEndian.AppendUint64(nil, 0), []string{"header length 0 is too short"}},
	{"header length one", append(binary.LittleEndian.AppendUint64(nil, 1), '{'), []string{"header length 1 is too short"}},
	{"not an object", rawFile(`["a"]`, nil), []string{"'{'"}},
	{"not json", rawFile(`{"a":`, nil), []string{"JSON"}},
	{"invalid utf-8", rawFile("{\"\xff\":1}", nil), []string{"UTF-8"}},
	{"trailing json", rawFile(`{} {}`, nil), []string{"after the object"}},
	{"trailing garbage", rawFile(`{}x`, nil), []string{"after the object"}},
	{"duplicate tensor", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)), []string{`"a"`, "twice"}},
	{"entry not object", rawFile(`{"a":[1]}`, nil), []string{`"a"`, "not an object"}},
	{"no dtype", rawFile(`{"a":{"shape":[1],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "no dtype"}},
	{"no shape", rawFile(`{"a":{"dtype":"U8","data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "no shape"}},
	{"no offsets", rawFile(`{"a":{"dtype":"U8","shape":[1]}}`, []byte{0}), []string{`"a"`, "no data_offsets"}},
	{"dtype case", rawFile(`{"a":{"DTYPE":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "no dtype"}},
	{"dtype number", rawFile(`{"a":{"dtype":8,"shape":[1],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "dtype"}},
	{"dtype empty", rawFile(`{"a":{"dtype":"","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "dtype"}},
	{"shape null", rawFile(`{"a":{"dtype":"U8","shape":null,"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "not an array"}},
	{"shape string dim", rawFile(`{"a":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "not an integer"}},
	{"shape float dim", rawFile(`{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}`, []byte{0}), []string{`"a"`, "not an integer"}},
	{"negative dim", rawFile(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, nil), []string{`"a"`, "negative dimension"}},
	{"shape overflow", rawFile(`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, nil), []string{`"a"`, "overflows"}},
	{"bytes overflow", rawFile(`{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}`, nil), []string{`"a"`, "needs"}},
	{"offsets one", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[1]}}`, []byte{0}), []string{`"a"`, "[begin, end]"}},
	{"offsets negative", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, []byte{0}), []string{`"a"`, "non-negative"}},
	{"offsets reversed", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}`, []byte{0}), []string{`"a"`, "begin after end"}},
	{"offsets past buffer", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, make([]byte, 3)), []string{`"a"`, "past the end", "truncated"}},
	{"size mismatch", rawFile(`{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`"a"`, "F16 [3] needs 3×2 bytes"}},
	{"overlap", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4)), []string{`"b"`, "overlaps", `"a"`}},
	{"same range", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, make([]byte, 2)), []string{"overlaps"}},
	{"zero-size inside another", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}`, make([]byte, 4)), []string{`"b"`, "overlaps"}},
	{"hole", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}}`, make([]byte, 4)), []string{`"b"`, "hole"}},
	{"hole at start", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, make([]byte, 3)), []string{`"a"`, "hole"}},
	{"trailing bytes", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, make([]byte, 5)), []string{"3 unindexed trailing bytes"}},
	{"unknown dtype out of bounds", rawFile(`{"a":{"dtype":"F4","shape":[8],"data_offsets":[0,9]}}`, make([]byte, 4)), []string{`"a"`, "past the end"}},
	{"metadata numbers", rawFile(`{"__metadata__":{"a":1}}`, nil), []string{"__metadata__"}},
	{"metadata array", rawFile(`{"__metadata__":["a"]}`, nil), []string{"__metadata__"}},
	{"truncated file", buildFile(nil, []fileTensor{{"w", F32, []int64{64}, 256}})[:200], []string{`"w"`, "truncated"}},
}

func TestOpenRejectsMalformedFiles(t *testing.T) {
	for _, c := range malformedFiles {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeFile(t, dir, "model.safetensors", c.file)
			ck, err := Open(dir)
			if err == nil {
				ck.Close()
			}
			wantErrNaming(t, err, append([]string{path}, c.fragment...)...)
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != path {
				t.Errorf("error %v is not a FormatError for %s", err, path)
			}
		})
	}
}

func TestOpenRejectsHeaderOverLimitBeforeAllocating(t *testing.T) {
	// A sparse file big enough that only the 100 MiB limit can refuse the header.
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(binary.LittleEndian.AppendUint64(nil, MaxHeaderSize+8)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxHeaderSize + 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	allocs := testing.AllocsPerRun(1, func() {
		_, err = Open(path)
	})
	wantErrNaming(t, err, path, "exceeds the 104857600-byte limit")
	if allocs > 100 {
		t.Errorf("%.0f allocations refusing an oversized header", allocs)
	}
}

func TestOpenAcceptsUnknownDTypeAndUnknownFields(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "model.safetensors", rawFile(`{"a":{"dtype":"F6_E3M2","shape":[5],"data_offsets":[0,4],"extra":{"x":[1]}},"__metadata__":null}`, make([]byte, 4)))
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, ok := c.Tensor("a")
	if !ok || a.DType != "F6_E3M2" || a.Size != 4 || c.Metadata != nil {
		t.Errorf("got %+v, metadata %v", a, c.Metadata)
	}
}

func TestOpenDirectoryChoices(t *testing.T) {
	empty := t.TempDir()
	if _, err := Open(empty); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("Open of an empty directory: %v", err)
	}
	if _, err := Open(filepath.Join(empty, "nothing.safetensors")); err == nil {
		t.Error("Open of a missing file succeeded")
	}
}

// shardedFixture writes a three-shard checkpoint by hand and returns its directory.
func shardedFixture(t *testing.T, index string, shards map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range shards {
		writeFile(t, dir, name, data)
	}
	writeFile(t, dir, IndexFileName, []byte(index))
	return dir
}

var goodShards = map[string][]byte{
	"model-00001-of-00002.safetensors": buildFile(map[string]string{"format": "pt"}, []fileTensor{{"a", BF16, []int64{2}, 4}, {"b", F32, []int64{1}, 4}}),
	"model-00002-of-00002.safetensors": buildFile(map[string]string{"format": "pt", "extra": "2"}, []fileTensor{{"c", U8, []int64{3}, 3}}),
}

const goodIndex = `{"metadata": {"total_size": 11}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}`

func TestOpenSharded(t *testing.T) {
	dir := shardedFixture(t, goodIndex, goodShards)
	for _, path := range []string{dir, filepath.Join(dir, IndexFileName)} {
		c, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		wantFiles := []string{filepath.Join(dir, "model-00001-of-00002.safetensors"), filepath.Join(dir, "model-00002-of-00002.safetensors")}
		if !slices.Equal(c.Files, wantFiles) || c.Index == nil || c.Index.TotalSize != 11 || len(c.Index.WeightMap) != 3 {
			t.Fatalf("Files %q Index %+v", c.Files, c.Index)
		}
		if c.Metadata["format"] != "pt" || c.Metadata["extra"] != "2" {
			t.Errorf("merged metadata %v", c.Metadata)
		}
		cT, _ := c.Tensor("c")
		if cT.File != wantFiles[1] {
			t.Errorf("c in %s", cT.File)
		}
		raw, err := c.Raw("c")
		shard := goodShards["model-00002-of-00002.safetensors"]
		if err != nil || !bytes.Equal(raw, shard[len(shard)-3:]) {
			t.Errorf("Raw(c) = %v, %v", raw, err)
		}
		c.Close()
	}
}

func TestOpenRejectsBadIndex(t *testing.T) {
	s1, s2 := "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	cases := []struct {
		name     string
		index    string
		shards   map[string][]byte
		fault    string // the file the error must name, relative to the directory
		fragment []string
	}{
		{"parent escape", `{"weight_map": {"a": "../x.safetensors"}}`, goodShards, IndexFileName, []string{`"a"`, "path separator"}},
		{"absolute path", `{"weight_map": {"a": "/etc/passwd"}}`, goodShards, IndexFileName, []string{`"a"`, "path separator"}},
		{"subdirectory", `{"weight_map": {"a": "sub/x.safetensors"}}`, goodShards, IndexFileName, []string{"path separator"}},
		{"backslash", `{"weight_map": {"a": "..\\x.safetensors"}}`, goodShards, IndexFileName, []string{"path separator"}},
		{"dot dot", `{"weight_map": {"a": ".."}}`, goodShards, IndexFileName, []string{"escapes"}},
		{"empty name", `{"weight_map": {"a": ""}}`, goodShards, IndexFileName, []string{"empty file name"}},
		{"no weight_map", `{"metadata": {}}`, goodShards, IndexFileName, []string{"no weight_map"}},
		{"empty weight_map", `{"weight_map": {}}`, goodShards, IndexFileName, []string{"empty"}},
		{"weight_map numbers", `{"weight_map": {"a": 1}}`, goodShards, IndexFileName, []string{"weight_map"}},
		{"not json", `{"weight_map": `, goodShards, IndexFileName, []string{"JSON"}},
		{"bad total_size", `{"metadata": {"total_size": "11"}, "weight_map": {"a": "` + s1 + `"}}`, goodShards, IndexFileName, []string{"total_size"}},
		{"missing shard", strings.Replace(goodIndex, `"c": "`+s2, `"c": "model-00003-of-00003.safetensors`, 1), goodShards,
			"model-00003-of-00003.safetensors", []string{"missing"}},
		{"tensor only in index", strings.Replace(goodIndex, `}}`, `, "d": "`+s2+`"}}`, 1), goodShards, s2, []string{`"d"`, "absent"}},
		{"tensor only in shard", strings.Replace(goodIndex, `"b": "`+s1+`", `, "", 1), goodShards, s1, []string{`"b"`, "not in the index"}},
		{"tensor in the other shard", strings.Replace(goodIndex, `"b": "`+s1, `"b": "`+s2, 1), goodShards, s1, []string{`"b"`, "maps it to " + s2}},
		{"duplicate across shards", goodIndex, map[string][]byte{
			s1: goodShards[s1],
			s2: buildFile(nil, []fileTensor{{"c", U8, []int64{3}, 3}, {"a", BF16, []int64{2}, 4}}),
		}, s2, []string{`"a"`, "also present in shard", s1}},
		{"malformed shard", goodIndex, map[string][]byte{s1: goodShards[s1], s2: goodShards[s2][:20]}, s2, []string{"truncated"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := shardedFixture(t, c.index, c.shards)
			ck, err := Open(dir)
			if err == nil {
				ck.Close()
			}
			wantErrNaming(t, err, append([]string{filepath.Join(dir, c.fault)}, c.fragment...)...)
		})
	}
}

func TestOpenPrefersSingleFileLikeTransformers(t *testing.T) {
	dir := shardedFixture(t, goodIndex, goodShards)
	single := buildFile(nil, []fileTensor{{"only", U8, []int64{1}, 1}})
	writeFile(t, dir, SingleFileName, single)
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Index != nil || c.Len() != 1 {
		t.Errorf("got Index %v and %d tensors; want model.safetensors alone", c.Index, c.Len())
	}
}

func TestFloat32ChunkedMatchesWholeDecode(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	specs := []TensorSpec{{Name: "f32", DType: F32, Shape: []int64{400_003}}, {Name: "bf16", DType: BF16, Shape: []int64{3, 200_001}},
		{Name: "e5m2", DType: F8E5M2, Shape: []int64{1_500_001}}}
	data := make(map[string][]byte)
	for _, s := range specs {
		size, _ := specSize(s)
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		data[s.Name] = b
	}
	dir := t.TempDir()
	writeAll(t, dir, specs, data, WriterOptions{})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, s := range specs {
		got, err := c.Float32(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(data[s.Name])/s.DType.Size())
		if err := DecodeFloat32(s.DType, data[s.Name], want); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d elements, want %d", s.Name, len(got), len(want))
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d] = %#08x, want %#08x", s.Name, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
			}
		}
	}
	if err := c.ReadFloat32("f32", make([]float32, 10)); err == nil || !strings.Contains(err.Error(), "destination has 10 elements") {
		t.Errorf("ReadFloat32 into a short slice: %v", err)
	}
}
