package formats

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The fixtures under testdata/ were written by Python's safetensors 0.8 (save_file with
// metadata {"format": "pt"}); see testdata/fixtures/README.md.
const fixtures = "../testdata/fixtures"

func TestOpenPythonWrittenCheckpoints(t *testing.T) {
	cases := []struct {
		dir     string
		dtype   DType
		shards  int
		tensors int
	}{
		{"phi-tiny", BF16, 3, 185},
		{"qwen2-tiny", F16, 1, 0},
		{"llama-tiny", F32, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			ck, err := Open(filepath.Join(fixtures, c.dir))
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			if len(ck.Files) != c.shards || ck.Metadata["format"] != "pt" {
				t.Errorf("Files %q, metadata %v", ck.Files, ck.Metadata)
			}
			if c.tensors > 0 && ck.Len() != c.tensors {
				t.Errorf("%d tensors, want %d", ck.Len(), c.tensors)
			}
			var total int64
			for _, ti := range ck.Tensors() {
				total += ti.Size
				if ti.DType != c.dtype {
					t.Errorf("%s: dtype %s, want %s", ti.Name, ti.DType, c.dtype)
				}
				vals, err := ck.Float32(ti.Name)
				if err != nil {
					t.Fatal(err)
				}
				for i, v := range vals {
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || math.Abs(float64(v)) > 100 {
						t.Fatalf("%s[%d] = %v: not a plausible weight", ti.Name, i, v)
					}
				}
			}
			if ck.Index != nil && ck.Index.TotalSize != total {
				t.Errorf("index total_size %d, tensors sum to %d", ck.Index.TotalSize, total)
			}
			emb, ok := ck.Tensor("language_model.model.embed_tokens.weight")
			if !ok || len(emb.Shape) != 2 || emb.Shape[0] != 1024 {
				t.Errorf("embed_tokens: %+v", emb)
			}
		})
	}
}

// TestWriterMatchesPythonBytes rewrites every Python-written file with the Writer, tensors
// declared in the file's data order, and expects the very same bytes: same header JSON
// (metadata first, names sorted, compact), same padding, same data layout. Files with
// several metadata keys can differ only in the order of those keys.
func TestWriterMatchesPythonBytes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(fixtures, "*", "*.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	golden, _ := filepath.Glob("../testdata/golden/model/*.safetensors")
	files = append(files, golden...)
	if len(files) < 6 {
		t.Fatalf("found only %q", files)
	}
	for _, path := range files {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			ck, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			tensors := ck.Tensors()
			slices.SortFunc(tensors, func(a, b TensorInfo) int { return cmp.Compare(a.Offset, b.Offset) })
			specs := make([]TensorSpec, len(tensors))
			for i, ti := range tensors {
				specs[i] = TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape}
			}
			dir := t.TempDir()
			w, err := NewWriter(dir, specs, WriterOptions{Metadata: ck.Metadata})
			if err != nil {
				t.Fatal(err)
			}
			for _, ti := range tensors {
				sec, err := ck.Section(ti.Name)
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Write(ti.Name, sec); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Commit(); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(path)
			got, _ := os.ReadFile(filepath.Join(dir, SingleFileName))
			if len(ck.Metadata) > 1 {
				// Python keeps __metadata__ in a hash map, so its key order is arbitrary;
				// ours is sorted. Everything after the header must still match, and the
				// header must have the same length.
				hdr := 8 + int(binary.LittleEndian.Uint64(want[:8]))
				if len(got) != len(want) || !bytes.Equal(got[hdr:], want[hdr:]) || !bytes.Equal(got[:8], want[:8]) {
					t.Errorf("rewritten file differs beyond the metadata order")
				}
				return
			}
			if !bytes.Equal(got, want) {
				n := min(len(got), len(want), 300)
				t.Errorf("rewritten file differs (%d vs %d bytes); starts\n%q\nvs\n%q", len(got), len(want), got[:n], want[:n])
			}
		})
	}
}
