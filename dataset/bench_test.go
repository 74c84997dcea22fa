package dataset

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeLLaVAFile writes n records shaped like LLaVA-1.5's mix (about 600 bytes each: an image path,
// two rounds of question and answer, every fifth record text-only), indented as the published file is.
func writeLLaVAFile(tb testing.TB, path string, n int) int64 {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	answer := strings.Repeat("The bus is white and red, parked by the side of a busy street. ", 3)
	w.WriteString("[\n")
	for i := 0; i < n; i++ {
		if i > 0 {
			w.WriteString(",\n")
		}
		image := fmt.Sprintf(",\n    \"image\": \"coco/train2017/%012d.jpg\"", i)
		q := "<image>\\nWhat are the colors of the bus in the image?"
		if i%5 == 4 {
			image, q = "", "Write a haiku about \\\"buses\\\"."
		}
		fmt.Fprintf(w, `  {
    "id": "%012d"%s,
    "conversations": [
      {"from": "human", "value": "%s"},
      {"from": "gpt", "value": "%s"},
      {"from": "human", "value": "What feature can be seen on the back of the bus?"},
      {"from": "gpt", "value": "An advertisement."}
    ]
  }`, i, image, q, answer)
	}
	w.WriteString("\n]\n")
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}

// BenchmarkOpen100k opens a 100 000-record LLaVA file (about 60 MB); MB/s is of the file.
func BenchmarkOpen100k(b *testing.B) {
	const n = 100_000
	path := filepath.Join(b.TempDir(), "data.json")
	size := writeLLaVAFile(b, path, n)
	opts := phiOptions(b, Stop)
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		d, err := Open(path, "", opts)
		if err != nil {
			b.Fatal(err)
		}
		if d.Len() != n {
			b.Fatalf("Len %d", d.Len())
		}
		d.Close()
	}
}

// BenchmarkSampleText reads, tokenizes and labels one two-round record (text-only, so the tokenizer
// and template are what is timed).
func BenchmarkSampleText(b *testing.B) {
	path := filepath.Join(b.TempDir(), "data.json")
	writeLLaVAFile(b, path, 5)
	d, err := Open(path, "", phiOptions(b, Stop))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Sample(4); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSampleShapes makes one coloured-shapes sample at the tiny tower's 56×56, PNG decoded and
// preprocessed.
func BenchmarkSampleShapes(b *testing.B) {
	dir := b.TempDir()
	if err := WriteShapes(dir, 1, 1, 56); err != nil {
		b.Fatal(err)
	}
	opts := phiOptions(b, Stop)
	opts.ImageSize = 56
	d, err := Open(filepath.Join(dir, "data.json"), "", opts)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Sample(0); err != nil {
			b.Fatal(err)
		}
	}
}
