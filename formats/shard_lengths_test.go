package formats

import (
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
