package formats

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fileTensor is a tensor entry for hand-built test files; data is filled with a pattern.
type fileTensor struct {
	name  string
	dtype DType
	shape []int64
	size  int64
}

// buildFile lays the tensors out contiguously in order with the package's header encoder.
func buildFile(metadata map[string]string, tensors []fileTensor) []byte {
	entries := make([]headerEntry, len(tensors))
	pos := int64(0)
	for i, t := range tensors {
		entries[i] = headerEntry{name: t.name, dtype: t.dtype, shape: t.shape, begin: pos, end: pos + t.size}
		pos += t.size
	}
	file := encodeHeader(metadata, entries)
	for i := range pos {
		file = append(file, byte(i*7+3))
	}
	return file
}

// rawFile assembles a file from a literal JSON header and a data buffer, padding nothing:
// for malformed-header tests.
func rawFile(header string, data []byte) []byte {
	file := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	file = append(file, header...)
	return append(file, data...)
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantErrNaming asserts err is non-nil and mentions every fragment (file name, tensor, reason).
func wantErrNaming(t *testing.T, err error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one naming %q", fragments)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("error %q does not mention %q", err, f)
		}
	}
}
