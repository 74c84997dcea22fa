package conformance

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, header string, body []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "g.safetensors")
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), body...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadGolden(t *testing.T) {
	body := binary.LittleEndian.AppendUint64(nil, 0x3FF8000000000000) // 1.5
	body = binary.LittleEndian.AppendUint64(body, 0xC000000000000000) // -2
	p := writeFile(t, `{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"__metadata__":{"chunk":"8"}}`, body)
	g, err := ReadGolden(p)
	if err != nil {
		t.Fatal(err)
	}
	a, err := g.Tensor("a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Data[0] != 1.5 || a.Data[1] != -2 {
		t.Errorf("values %v", a.Data)
	}
	if v, err := g.Int("chunk"); err != nil || v != 8 {
		t.Errorf("chunk %d %v", v, err)
	}
	if _, err := g.Tensor("b"); err == nil || !strings.Contains(err.Error(), "no tensor") {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestReadGoldenErrors(t *testing.T) {
	for _, c := range []struct {
		name, header string
		body         []byte
		want         string
	}{
		{"wrong dtype", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8), "want F64"},
		{"offsets past the end", `{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}`, make([]byte, 8), "offsets"},
		{"bad json", `{"a":`, nil, "header"},
	} {
		_, err := ReadGolden(writeFile(t, c.header, c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// A header length past the end of the file.
	p := filepath.Join(t.TempDir(), "short.safetensors")
	if err := os.WriteFile(p, binary.LittleEndian.AppendUint64(nil, 1<<40), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadGolden(p); err == nil {
		t.Error("header length past the end: no error")
	}
}
