package formats

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriterShardLengths(t *testing.T) {
	dir := t.TempDir()
	var specs []TensorSpec
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		specs = append(specs, TensorSpec{Name: n, DType: F32, Shape: []int64{3}})
	}
	w, err := NewWriter(dir, specs, WriterOptions{ShardLengths: []int{2, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	got := w.Shards()
	if len(got) != 3 || strings.Join(got[0], "") != "ab" || strings.Join(got[1], "") != "c" || strings.Join(got[2], "") != "de" {
		t.Fatalf("shards %v", got)
	}
	for _, s := range specs {
		if err := w.WriteBytes(s.Name, make([]byte, 12)); err != nil {
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
	if len(c.Files) != 3 {
		t.Errorf("%d files", len(c.Files))
	}
	for _, bad := range [][]int{{2, 2}, {5, 0}, {6}} {
		if _, err := NewWriter(t.TempDir(), specs, WriterOptions{ShardLengths: bad}); err == nil {
			t.Errorf("shard lengths %v accepted", bad)
		}
	}
}

// Tensors streamed from a file region go through the kernel's copy; short regions still fail.
func TestWriterCopiesFileRegions(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.bin")
	payload := make([]byte, 4200)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	os.WriteFile(src, payload, 0o644)
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	specs := []TensorSpec{{Name: "a", DType: U8, Shape: []int64{100}}, {Name: "b", DType: U8, Shape: []int64{4000}}}
	w, err := NewWriter(dir, specs, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.Seek(17, io.SeekStart)
	if err := w.Write("a", &io.LimitedReader{R: f, N: 100}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write("b", &io.LimitedReader{R: f, N: 4000}); err != nil {
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
	a, _ := c.Raw("a")
	b, _ := c.Raw("b")
	if !bytes.Equal(a, payload[17:117]) || !bytes.Equal(b, payload[117:4117]) {
		t.Error("file-region copy changed the bytes")
	}
	// A region that ends early (past EOF) is an error, not a short tensor.
	w2, _ := NewWriter(t.TempDir(), specs[:1], WriterOptions{})
	f.Seek(int64(len(payload)-10), io.SeekStart)
	if err := w2.Write("a", &io.LimitedReader{R: f, N: 100}); err == nil {
		t.Error("short file region accepted")
	}
	w2.Abort()
}
