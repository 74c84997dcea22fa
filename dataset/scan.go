package dataset

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// scan reads the file once, recording where each good record lies and counting the bad ones.
func (d *Dataset) scan() error {
	st, err := d.file.Stat()
	if err != nil {
		return fmt.Errorf("dataset: %w", err)
	}
	size := st.Size()
	br := bufio.NewReaderSize(d.file, 1<<20)
	var base int64 // offset of the first value; the decoder counts from there
	var first byte
	for {
		c, err := br.ReadByte()
		if err == io.EOF {
			return fmt.Errorf("dataset %s: the file is empty, want a JSON array of records", d.path)
		}
		if err != nil {
			return fmt.Errorf("dataset %s: %w", d.path, err)
		}
		if !isSpace(c) {
			first = c
			if err := br.UnreadByte(); err != nil {
				return fmt.Errorf("dataset %s: %w", d.path, err)
			}
			break
		}
		base++
	}
	lines := &lineCounter{f: d.file, line: 1}
	inArray := first == '['
	if !inArray && first != '{' {
		line, col, err := lines.at(base)
		if err != nil {
			return fmt.Errorf("dataset %s: %w", d.path, err)
		}
		return fmt.Errorf("dataset %s: line %d, column %d: the file starts with %q, want a JSON array of records ([{…}, …]) or JSON Lines ({…} per line)",
			d.path, line, col, first)
	}
	dec := json.NewDecoder(br)
	if inArray {
		if _, err := dec.Token(); err != nil { // the '[' seen above
			return fmt.Errorf("dataset %s: %w", d.path, err)
		}
	}
	record := 0
	var raw json.RawMessage // reused: the decoder appends each record into it
	var shape recordShape
	for ; ; record++ {
		if record == math.MaxInt32 {
			return fmt.Errorf("dataset %s: more than %d records", d.path, math.MaxInt32)
		}
		if inArray && !dec.More() {
			break
		}
		start := base + dec.InputOffset()
		err := dec.Decode(&raw)
		end := base + dec.InputOffset()
		if !inArray && err == io.EOF {
			break
		}
		if err != nil {
			return d.syntaxError(err, start, size, record, inArray, lines)
		}
		shape.read(raw)
		if e := d.check(&shape, record); e != nil {
			if err := d.openBad(e, start, lines); err != nil {
				return err
			}
			continue
		}
		if end-start > math.MaxUint32 {
			return fmt.Errorf("dataset %s: record %d is %d bytes long, more than the %d supported", d.path, record, end-start, uint32(math.MaxUint32))
		}
		d.kept = append(d.kept, location{start: start, length: uint32(end - start), record: int32(record)})
	}
	d.total = record
	if !inArray {
		return nil
	}
	tok, err := dec.Token()
	if err != nil || tok != json.Delim(']') {
		at, what := base+dec.InputOffset(), fmt.Sprintf("unexpected %v", tok)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			at, what = size, "the file ends before the array of records is closed with ]"
		} else if err != nil {
			what = err.Error()
		}
		if record > 0 {
			what += fmt.Sprintf(" (after record %d)", record-1)
		}
		return d.positionError(lines, at, what)
	}
	end := base + dec.InputOffset()
	if extra, ok, err := firstNonSpace(d.file, end, size); err != nil {
		return fmt.Errorf("dataset %s: %w", d.path, err)
	} else if ok {
		return d.positionError(lines, extra, "data after the closing ] of the array of records")
	}
	return nil
}

// check validates the shape of a record; nil means good.
func (d *Dataset) check(r *recordShape, record int) *RecordError {
	if r.kind != '{' {
		return &RecordError{Record: record, Reason: ReasonMalformed, Err: fmt.Errorf("the record is %s, want an object", jsonKind(r.kind))}
	}
	if len(r.id) > 0 && r.id[0] != '"' && r.id[0] != 'n' && jsonKind(r.id[0]) != "a number" {
		_, err := recordID(r.id)
		return &RecordError{Record: record, Reason: ReasonMalformed, Err: err}
	}
	bad := func(reason Reason, format string, args ...any) *RecordError {
		id, _ := recordID(r.id) // only now: a good record's id is not needed
		return &RecordError{Record: record, ID: id, Reason: reason, Err: fmt.Errorf(format, args...)}
	}
	hasImage := len(r.image) > 0 && string(r.image) != "null"
	if hasImage && (r.image[0] != '"' || string(r.image) == `""`) {
		_, _, err := d.imagePath(r.image)
		return bad(ReasonMalformed, "%w", err)
	}
	switch r.conversations {
	case 0, 'n':
		return bad(ReasonNoConversation, "\"conversations\" is absent or null")
	case '[':
	default:
		return bad(ReasonMalformed, "\"conversations\" is %s, want a list of turns", jsonKind(r.conversations))
	}
	if len(r.turns) == 0 {
		return bad(ReasonNoConversation, "\"conversations\" is empty")
	}
	for i, t := range r.turns {
		if t.kind != '{' {
			return bad(ReasonMalformed, "turn %d is %s, want an object with \"from\" and \"value\"", i, jsonKind(t.kind))
		}
		for _, f := range [...]struct {
			name string
			kind byte
		}{{"from", t.from}, {"value", t.value}} {
			switch f.kind {
			case '"':
			case 0:
				return bad(ReasonMalformed, "turn %d has no %q", i, f.name)
			default:
				return bad(ReasonMalformed, "turn %d: %q is %s, want a string", i, f.name, jsonKind(f.kind))
			}
		}
	}
	first := 0
	if !r.turns[0].human {
		first = 1 // TinyLLaVA drops a first turn that is not from "human"
	}
	switch n := len(r.turns) - first; {
	case n == 0:
		return bad(ReasonNoConversation, "no question and answer (a single turn, not from \"human\")")
	case n%2 != 0:
		return bad(ReasonUnpairedTurns, "%d turns do not pair into questions and answers", len(r.turns))
	}
	if hasImage && d.opts.CheckImages {
		path, _, err := d.imagePath(r.image)
		if err != nil {
			return bad(ReasonMalformed, "%w", err)
		}
		st, err := os.Stat(path)
		switch {
		case err != nil:
			return bad(ReasonMissingImage, "%w", err)
		case st.IsDir():
			return bad(ReasonBadImage, "%s is a directory", path)
		}
	}
	return nil
}

// openBad deals with a bad record found by Open: an error under Stop, a count under Skip.
func (d *Dataset) openBad(e *RecordError, start int64, lines *lineCounter) error {
	if d.opts.OnBadRecord == Skip {
		d.openCounts[e.Reason]++
		if len(d.openExamples) >= maxExamples {
			return nil
		}
	}
	at, err := valueStart(d.file, start)
	if err == nil {
		e.Line, _, err = lines.at(at)
	}
	if err != nil {
		return fmt.Errorf("dataset %s: %w", d.path, err)
	}
	if d.opts.OnBadRecord == Stop {
		return fmt.Errorf("dataset %s: %w", d.path, e)
	}
	d.openExamples = append(d.openExamples, *e)
	return nil
}

// syntaxError turns a decoding failure into an error naming the line and column at fault.
func (d *Dataset) syntaxError(decErr error, start, size int64, record int, inArray bool, lines *lineCounter) error {
	var syn *json.SyntaxError
	if !errors.As(decErr, &syn) && !errors.Is(decErr, io.ErrUnexpectedEOF) {
		return fmt.Errorf("dataset %s: record %d: %w", d.path, record, decErr)
	}
	// The stream decoder's offsets do not count the separators it skipped, so the record is decoded
	// again on its own, from where it starts.
	br := bufio.NewReader(io.NewSectionReader(d.file, start, size-start))
	at := start
	skipSpace := func() (byte, error) {
		for {
			c, err := br.ReadByte()
			if err != nil || !isSpace(c) {
				return c, err
			}
			at++
		}
	}
	c, err := skipSpace()
	if err == nil && inArray && record > 0 {
		if c != ',' {
			return d.positionError(lines, at, fmt.Sprintf("found %q where a , or ] should follow record %d", c, record-1))
		}
		at++
		_, err = skipSpace()
	}
	if err == io.EOF {
		return d.positionError(lines, size, "unexpected end of file (the array of records is not closed)")
	}
	if err != nil {
		return fmt.Errorf("dataset %s: %w", d.path, err)
	}
	recDec := json.NewDecoder(io.NewSectionReader(d.file, at, size-at))
	var raw json.RawMessage
	err = recDec.Decode(&raw)
	switch {
	case errors.As(err, &syn):
		return d.positionError(lines, at+max(syn.Offset-1, 0), fmt.Sprintf("%v (record %d)", syn, record))
	case errors.Is(err, io.ErrUnexpectedEOF):
		line, _, lerr := lines.at(at)
		if lerr != nil {
			return fmt.Errorf("dataset %s: %w", d.path, lerr)
		}
		return d.positionError(lines, size, fmt.Sprintf("unexpected end of file inside record %d, which starts at line %d", record, line))
	}
	return d.positionError(lines, at, fmt.Sprintf("%v (record %d)", decErr, record))
}

// positionError is an error at a byte offset of the file, named by line and column.
func (d *Dataset) positionError(lines *lineCounter, at int64, msg string) error {
	line, col, err := lines.at(at)
	if err != nil {
		return fmt.Errorf("dataset %s: %s (byte %d; %v)", d.path, msg, at, err)
	}
	return fmt.Errorf("dataset %s: line %d, column %d: %s", d.path, line, col, msg)
}

// lineCounter turns byte offsets into lines and columns, reading the file forward only: offsets
// asked for must not decrease (Open finds bad records in file order), so all the positions of one
// Open cost at most one extra read of the file.
type lineCounter struct {
	f         *os.File
	pos       int64 // bytes counted so far
	line      int   // line of pos, from 1
	lineStart int64 // offset where that line starts
	buf       []byte
}

// at returns the line (from 1) and column (in bytes, from 1) of offset off.
func (c *lineCounter) at(off int64) (line, col int, err error) {
	if off < c.pos {
		return 0, 0, fmt.Errorf("line count: offset %d is behind %d", off, c.pos)
	}
	if c.buf == nil {
		c.buf = make([]byte, 64<<10)
	}
	for c.pos < off {
		n := int(min(int64(len(c.buf)), off-c.pos))
		m, err := c.f.ReadAt(c.buf[:n], c.pos)
		for i, b := range c.buf[:m] {
			if b == '\n' {
				c.line++
				c.lineStart = c.pos + int64(i) + 1
			}
		}
		c.pos += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return c.line, int(off-c.lineStart) + 1, nil
}

// valueStart returns the offset of the first byte at or after start that is not a comma or white
// space (start itself when there is none).
func valueStart(f *os.File, start int64) (int64, error) {
	var buf [256]byte
	for at := start; ; {
		n, err := f.ReadAt(buf[:], at)
		for i := 0; i < n; i++ {
			if c := buf[i]; c != ',' && !isSpace(c) {
				return at + int64(i), nil
			}
		}
		at += int64(n)
		if err == io.EOF {
			return start, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// firstNonSpace finds the first byte of [from, to) that is not white space.
func firstNonSpace(f *os.File, from, to int64) (int64, bool, error) {
	buf := make([]byte, 64<<10)
	for at := from; at < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-at)], at)
		for i := 0; i < n; i++ {
			if !isSpace(buf[i]) {
				return at + int64(i), true, nil
			}
		}
		at += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, false, err
		}
	}
	return 0, false, nil
}
