package trainlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// Writer appends records to a metrics.jsonl file, one line each, written
// to the file as soon as Write is called. Steps must increase.
type Writer struct {
	f    *os.File
	path string
	last int  // the last step written or kept
	any  bool // whether there is a last step
}

// Create starts a new log at path, replacing any file there.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	return &Writer{f: f, path: path}, nil
}

// Resume reopens the log of an interrupted run for appending, after
// cutting it back to the records of steps up to step (the checkpoint the
// run resumes from): later records, and a torn last line without its
// newline, are removed from the file. A missing file is an error wrapping
// fs.ErrNotExist; so is, naming the line, a kept line that does not parse
// or whose step does not increase.
func Resume(path string, step int) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	keep, last, any, err := scanUpTo(f, path, step)
	if err == nil {
		err = f.Truncate(keep)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("metrics log: resume %s at step %d: %w", path, step, err)
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	return &Writer{f: f, path: path, last: last, any: any}, nil
}

// scanUpTo reads records until the first with a step above limit and
// returns the byte length of the lines before it.
func scanUpTo(r io.Reader, path string, limit int) (keep int64, last int, any bool, err error) {
	br := bufio.NewReaderSize(r, 1<<16)
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if err == io.EOF {
			return keep, last, any, nil // a torn last line (or nothing) after keep
		}
		if err != nil {
			return 0, 0, false, err
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			return 0, 0, false, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		if rec.Step > limit {
			return keep, last, any, nil
		}
		if any && rec.Step <= last {
			return 0, 0, false, fmt.Errorf("%s line %d: step %d after step %d", path, line, rec.Step, last)
		}
		keep += int64(len(b))
		last, any = rec.Step, true
	}
}

// Path is the file written to.
func (w *Writer) Path() string { return w.path }

// Write appends the record as one line.
func (w *Writer) Write(r Record) error {
	if w.f == nil {
		return fmt.Errorf("metrics log %s: write after close", w.path)
	}
	if w.any && r.Step <= w.last {
		return fmt.Errorf("metrics log %s: step %d after step %d", w.path, r.Step, w.last)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("metrics log %s: step %d: %w", w.path, r.Step, err)
	}
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("metrics log: step %d: %w", r.Step, err)
	}
	w.last, w.any = r.Step, true
	return nil
}

// Close syncs and closes the file.
func (w *Writer) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err != nil {
		return fmt.Errorf("metrics log: %w", err)
	}
	return nil
}

// Read returns every record of a metrics log, skipping a torn last line
// (a run writing or killed mid-line). A line that does not parse is an
// error naming it.
func Read(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("metrics log: %w", err)
	}
	var recs []Record
	for line := 1; len(data) > 0; line++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // torn last line
		}
		var rec Record
		if err := json.Unmarshal(data[:i], &rec); err != nil {
			return nil, fmt.Errorf("metrics log %s line %d: %w", path, line, err)
		}
		recs = append(recs, rec)
		data = data[i+1:]
	}
	return recs, nil
}
