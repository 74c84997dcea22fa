package outdir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	base := t.TempDir()
	in := filepath.Join(base, "in")
	os.MkdirAll(in, 0o755)
	full := filepath.Join(base, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "config.json"), []byte("{}"), 0o644)
	other := filepath.Join(base, "other")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		out   string
		force bool
		want  string
	}{
		{filepath.Join(base, "new"), false, ""},
		{in, false, "overlaps"},
		{filepath.Join(in, "sub"), false, "overlaps"},
		{base, true, "overlaps"},
		{full, false, "use --force"},
		{full, true, ""},
		{other, true, "holds no checkpoint"},
		{file, false, "not a directory"},
		{"", false, "no output"},
	} {
		err := Check(tc.out, tc.force, in)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check(%q, %v) = %v, want %q", tc.out, tc.force, err, tc.want)
		}
	}
}

func TestCreateCommitReplaces(t *testing.T) {
	base := t.TempDir()
	out := filepath.Join(base, "a", "out")
	for round, content := range []string{"first", "second"} {
		d, err := Create(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(filepath.Join(d.Path, "f"), []byte(content)); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(out, "f")); round == 0 && !os.IsNotExist(err) {
			t.Fatal("output visible before Commit")
		}
		if err := d.Commit(); err != nil {
			t.Fatal(err)
		}
		d.Remove() // no-op after Commit
		if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != content {
			t.Fatalf("round %d: %q", round, b)
		}
		if st, _ := os.Stat(out); st.Mode().Perm() != 0o755 {
			t.Errorf("mode %v", st.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Errorf("left beside the output: %v", entries)
	}
	d, _ := Create(out)
	d.Remove()
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("Remove left %v", entries)
	}
	if err := WriteFile(filepath.Join(out, "f"), nil); err == nil {
		t.Error("WriteFile replaced an existing file")
	}
}

func TestCopySideFiles(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	for _, n := range []string{"config.json", "tokenizer.json", "model.safetensors", "model-00001-of-00002.safetensors",
		"model.safetensors.index.json", ".hidden", "matsurgery.json"} {
		os.WriteFile(filepath.Join(src, n), []byte(n), 0o644)
	}
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	warnings, err := CopySideFiles(src, dst, "matsurgery.json")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadDir(dst)
	var names []string
	for _, e := range got {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "config.json,tokenizer.json" {
		t.Errorf("copied %v", names)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "sub") {
		t.Errorf("warnings %v", warnings)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "tokenizer.json")); string(b) != "tokenizer.json" {
		t.Errorf("content %q", b)
	}
}
