package outdir

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CopySideFiles copies a checkpoint directory's files other than its
// tensors (tokenizer, configs, …) into dst: every regular file except hidden
// ones, *.safetensors, the safetensors index and the names in skip.
// Subdirectories and special files are not copied; each gives a warning.
func CopySideFiles(src, dst string, skip ...string) (warnings []string, err error) {
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, err
	}
	skipped := map[string]bool{"model.safetensors.index.json": true}
	for _, n := range skip {
		skipped[n] = true
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, "."), strings.HasSuffix(n, ".safetensors"), skipped[n]:
			continue
		case e.IsDir():
			warnings = append(warnings, fmt.Sprintf("subdirectory %s of %s not copied", n, src))
			continue
		case !e.Type().IsRegular():
			warnings = append(warnings, fmt.Sprintf("%s is not a regular file: not copied", filepath.Join(src, n)))
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := CopyFile(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
			return nil, err
		}
	}
	return warnings, nil
}

// CopyFile copies src to dst (which must not exist) and fsyncs it.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
