package formats

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// phi2LikeSpecs declares the tensors of a TinyLLaVA-Phi-2-SigLIP-3.1B-sized checkpoint in
// BF16: about 6 GB in some 900 tensors.
func phi2LikeSpecs() []TensorSpec {
	var specs []TensorSpec
	add := func(name string, shape ...int64) {
		specs = append(specs, TensorSpec{Name: name, DType: BF16, Shape: shape})
	}
	add("language_model.model.embed_tokens.weight", 51200, 2560)
	for l := range 32 {
		p := fmt.Sprintf("language_model.model.layers.%d.", l)
		add(p+"input_layernorm.weight", 2560)
		add(p+"input_layernorm.bias", 2560)
		for _, m := range []string{"q_proj", "k_proj", "v_proj", "dense"} {
			add(p+"self_attn."+m+".weight", 2560, 2560)
			add(p+"self_attn."+m+".bias", 2560)
		}
		add(p+"mlp.fc1.weight", 10240, 2560)
		add(p+"mlp.fc1.bias", 10240)
		add(p+"mlp.fc2.weight", 2560, 10240)
		add(p+"mlp.fc2.bias", 2560)
	}
	add("language_model.model.final_layernorm.weight", 2560)
	add("language_model.model.final_layernorm.bias", 2560)
	add("language_model.lm_head.weight", 51200, 2560)
	add("language_model.lm_head.bias", 51200)
	v := "vision_tower._vision_tower.vision_model."
	add(v+"embeddings.patch_embedding.weight", 1152, 3, 14, 14)
	add(v+"embeddings.patch_embedding.bias", 1152)
	add(v+"embeddings.position_embedding.weight", 729, 1152)
	for l := range 27 {
		p := fmt.Sprintf("%sencoder.layers.%d.", v, l)
		for _, n := range []string{"layer_norm1", "layer_norm2"} {
			add(p+n+".weight", 1152)
			add(p+n+".bias", 1152)
		}
		for _, m := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			add(p+"self_attn."+m+".weight", 1152, 1152)
			add(p+"self_attn."+m+".bias", 1152)
		}
		add(p+"mlp.fc1.weight", 4304, 1152)
		add(p+"mlp.fc1.bias", 4304)
		add(p+"mlp.fc2.weight", 1152, 4304)
		add(p+"mlp.fc2.bias", 1152)
	}
	add("connector._connector.0.weight", 2560, 1152)
	add("connector._connector.0.bias", 2560)
	add("connector._connector.2.weight", 2560, 2560)
	add("connector._connector.2.bias", 2560)
	return specs
}

// makeSparseCheckpoint lays out a real sharded checkpoint (headers from the Writer's plan,
// a real index) whose data regions are holes in sparse files: full size on paper, no disk.
func makeSparseCheckpoint(tb testing.TB, dir string, specs []TensorSpec, maxShard int64) int64 {
	tb.Helper()
	w, err := NewWriter(dir, specs, WriterOptions{MaxShardSize: maxShard, Metadata: map[string]string{"format": "pt"}})
	if err != nil {
		tb.Fatal(err)
	}
	defer w.Abort()
	weightMap := make(map[string]string)
	for i, s := range specs {
		weightMap[s.Name] = w.shards[w.shard[i]].name
	}
	for _, sh := range w.shards {
		f, err := os.Create(filepath.Join(dir, sh.name))
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := f.Write(sh.header); err != nil {
			tb.Fatal(err)
		}
		if err := f.Truncate(int64(len(sh.header)) + sh.dataSize); err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	index, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": w.TotalSize()}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), index, 0o644); err != nil {
		tb.Fatal(err)
	}
	return w.TotalSize()
}

// TestOpenLargeCheckpointReadsHeadersOnly opens a 6 GB sharded checkpoint (sparse files)
// and checks that what Open allocates is a tiny, size-independent amount.
func TestOpenLargeCheckpointReadsHeadersOnly(t *testing.T) {
	dir := t.TempDir()
	specs := phi2LikeSpecs()
	total := makeSparseCheckpoint(t, dir, specs, 2<<30)
	if total < 6e9 {
		t.Fatalf("fixture is only %d bytes", total)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := Open(dir)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Len() != len(specs) || len(c.Files) != 4 || c.Index.TotalSize != total {
		t.Fatalf("%d tensors in %d files, total %d", c.Len(), len(c.Files), c.Index.TotalSize)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("Open of a %d-byte checkpoint allocated %d bytes; want headers only", total, alloc)
	} else {
		t.Logf("Open of %.2f GB in %d tensors allocated %.2f MB", float64(total)/1e9, c.Len(), float64(alloc)/1e6)
	}
	// Streaming one big tensor works without loading its shard.
	sec, err := c.Section("language_model.lm_head.weight")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, io.LimitReader(sec, 1<<20)); n != 1<<20 || err != nil {
		t.Errorf("streamed %d bytes: %v", n, err)
	}
}

func BenchmarkOpenSharded6GB(b *testing.B) {
	dir := b.TempDir()
	makeSparseCheckpoint(b, dir, phi2LikeSpecs(), 2<<30)
	b.ReportAllocs()
	for b.Loop() {
		c, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkWriterStream measures Writer.Write from a file section to a new checkpoint,
// as surgery copies untouched tensors (page cache to page cache; includes fsync).
func BenchmarkWriterStream(b *testing.B) {
	src := b.TempDir()
	specs := []TensorSpec{{Name: "a", DType: BF16, Shape: []int64{4096, 4096}}, {Name: "b", DType: BF16, Shape: []int64{4096, 4096}}}
	data := make([]byte, 4096*4096*2)
	for i := range data {
		data[i] = byte(i * 31)
	}
	w, err := NewWriter(src, specs, WriterOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range specs {
		if err := w.WriteBytes(s.Name, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		b.Fatal(err)
	}
	c, err := Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(2 * int64(len(data)))
	for b.Loop() {
		dst := b.TempDir()
		w, err := NewWriter(dst, specs, WriterOptions{Overwrite: true})
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range specs {
			sec, _ := c.Section(s.Name)
			if err := w.Write(s.Name, sec); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
