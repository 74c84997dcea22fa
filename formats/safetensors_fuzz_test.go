package formats

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"
)

// FuzzParseHeader feeds arbitrary bytes to the header reader as a whole file. Whatever
// the input, it must not panic, every error must be a FormatError naming the file, and
// whatever it accepts must satisfy the layout invariants and survive a re-encode by the
// writer's header encoder unchanged.
func FuzzParseHeader(f *testing.F) {
	f.Add(buildFile(map[string]string{"format": "pt"}, []fileTensor{
		{"a", F32, []int64{2, 2}, 16}, {"b", BF16, []int64{3}, 6},
	}))
	f.Add(buildFile(nil, []fileTensor{{"scalar", F64, []int64{}, 8}, {"empty", I8, []int64{0, 4}, 0}}))
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	const name = "fuzz.safetensors"
	f.Fuzz(func(t *testing.T, file []byte) {
		h, err := readHeader(bytes.NewReader(file), int64(len(file)), name)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != name {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		checkHeaderInvariants(t, h, int64(len(file)))
		entries := make([]headerEntry, len(h.tensors))
		for i, ti := range h.tensors {
			begin := ti.Offset - h.dataStart
			entries[i] = headerEntry{name: ti.Name, dtype: ti.DType, shape: ti.Shape, begin: begin, end: begin + ti.Size}
		}
		again := append(encodeHeader(h.metadata, entries), file[h.dataStart:]...)
		h2, err := readHeader(bytes.NewReader(again), int64(len(again)), name)
		if err != nil {
			t.Fatalf("re-encoded header rejected: %v\nfile: %q", err, again[:min(len(again), 512)])
		}
		if len(h.metadata) != len(h2.metadata) || (len(h.metadata) > 0 && !maps.Equal(h.metadata, h2.metadata)) {
			t.Fatalf("metadata changed: %v → %v", h.metadata, h2.metadata)
		}
		if len(h.tensors) != len(h2.tensors) {
			t.Fatalf("%d tensors became %d", len(h.tensors), len(h2.tensors))
		}
		for i := range h.tensors {
			a, b := h.tensors[i], h2.tensors[i]
			if a.Name != b.Name || a.DType != b.DType || !slices.Equal(a.Shape, b.Shape) || a.Size != b.Size ||
				a.Offset-h.dataStart != b.Offset-h2.dataStart {
				t.Fatalf("tensor changed on re-encode: %+v → %+v", a, b)
			}
		}
	})
}

// checkHeaderInvariants asserts what a successful parse promises.
func checkHeaderInvariants(t *testing.T, h *fileHeader, fileSize int64) {
	t.Helper()
	if h.dataStart < 8 || h.dataStart > fileSize {
		t.Fatalf("data start %d outside a %d-byte file", h.dataStart, fileSize)
	}
	var covered int64
	for i, ti := range h.tensors {
		if i > 0 && h.tensors[i-1].Name >= ti.Name {
			t.Fatalf("tensors not sorted and unique: %q then %q", h.tensors[i-1].Name, ti.Name)
		}
		if ti.Name == "" || ti.Name == metadataKey || ti.DType == "" {
			t.Fatalf("bad name or dtype: %+v", ti)
		}
		if ti.Offset < h.dataStart || ti.Size < 0 || ti.Offset+ti.Size > fileSize {
			t.Fatalf("tensor %q [%d, +%d) outside the data of a %d-byte file", ti.Name, ti.Offset, ti.Size, fileSize)
		}
		for _, d := range ti.Shape {
			if d < 0 {
				t.Fatalf("tensor %q: negative dimension in %v", ti.Name, ti.Shape)
			}
		}
		if sz := ti.DType.Size(); sz > 0 && ti.NumElements()*int64(sz) != ti.Size {
			t.Fatalf("tensor %q: %s %v is not %d bytes", ti.Name, ti.DType, ti.Shape, ti.Size)
		}
		covered += ti.Size
	}
	if covered != fileSize-h.dataStart {
		t.Fatalf("tensors cover %d bytes of a %d-byte data buffer", covered, fileSize-h.dataStart)
	}
}
