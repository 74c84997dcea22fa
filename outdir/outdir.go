// Package outdir writes a result directory atomically: everything goes into
// a hidden temporary sibling of the output, which takes the output's place
// only when complete. A failed or interrupted run leaves nothing that looks
// like a result, and never touches what was there before unless replacing it
// was asked for.
package outdir

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Check refuses an output that overlaps one of the inputs (is one, lies
// inside one, or holds one), that exists and is not a directory, or that is
// a non-empty directory without force. Even with force it refuses a
// directory that holds no checkpoint (no config.json and no .safetensors),
// so a mistyped path cannot replace an unrelated directory.
func Check(out string, force bool, inputs ...string) error {
	if out == "" {
		return fmt.Errorf("no output directory given")
	}
	ao, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	sep := string(filepath.Separator)
	for _, in := range inputs {
		ai, err := filepath.Abs(in)
		if err != nil {
			return err
		}
		if ao == ai || strings.HasPrefix(ao+sep, ai+sep) || strings.HasPrefix(ai+sep, ao+sep) {
			return fmt.Errorf("output %s overlaps the input %s: choose another output", out, in)
		}
	}
	st, err := os.Stat(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output %s: %w", out, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output %s exists and is not a directory", out)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return fmt.Errorf("output %s: %w", out, err)
	}
	if len(entries) == 0 {
		return nil
	}
	if !force {
		return fmt.Errorf("output directory %s is not empty: use --force to replace it", out)
	}
	for _, e := range entries {
		if e.Name() == "config.json" || strings.HasSuffix(e.Name(), ".safetensors") {
			return nil
		}
	}
	return fmt.Errorf("output directory %s holds no checkpoint (no config.json or .safetensors): refusing to replace it even with --force", out)
}

// Dir is a temporary directory that becomes Out on Commit.
type Dir struct {
	Out  string // the final path
	Path string // where to write meanwhile
	done bool
}

// Create makes the temporary sibling of out (and out's parents).
func Create(out string) (*Dir, error) {
	parent := filepath.Dir(filepath.Clean(out))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("output %s: %w", out, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(filepath.Clean(out))+".partial-")
	if err != nil {
		return nil, fmt.Errorf("output %s: %w", out, err)
	}
	return &Dir{Out: out, Path: tmp}, nil
}

// Commit gives the directory its final mode and moves it to Out, replacing
// what is there (the old content is moved aside first and removed last; if
// the move fails it is put back).
func (d *Dir) Commit() error {
	if d.done {
		return fmt.Errorf("output %s: already committed", d.Out)
	}
	if err := os.Chmod(d.Path, 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(d.Out); err == nil {
		var b [6]byte
		rand.Read(b[:])
		old := filepath.Join(filepath.Dir(filepath.Clean(d.Out)), "."+filepath.Base(filepath.Clean(d.Out))+".old-"+hex.EncodeToString(b[:]))
		if err := os.Rename(d.Out, old); err != nil {
			return fmt.Errorf("output %s: %w", d.Out, err)
		}
		if err := os.Rename(d.Path, d.Out); err != nil {
			if rerr := os.Rename(old, d.Out); rerr != nil {
				return fmt.Errorf("output %s: %w (and restoring the previous output failed: %v; it is at %s)", d.Out, err, rerr, old)
			}
			return fmt.Errorf("output %s: %w", d.Out, err)
		}
		d.done = true
		return os.RemoveAll(old)
	}
	if err := os.Rename(d.Path, d.Out); err != nil {
		return fmt.Errorf("output %s: %w", d.Out, err)
	}
	d.done = true
	return nil
}

// Remove deletes the temporary directory; after Commit it does nothing.
func (d *Dir) Remove() {
	if !d.done {
		os.RemoveAll(d.Path)
	}
}

// WriteFile creates path (which must not exist) with data and fsyncs it.
func WriteFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
