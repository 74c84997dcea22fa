// Package formats knows bytes and files, not models: it reads and writes safetensors
// checkpoints (single files and sharded directories, streamed tensor by tensor), converts
// between float encodings, and parses the JSON configs of the checkpoints matsurgery converts.
package formats

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize bounds the JSON header of a safetensors file (as the reference
// implementation does): a longer header is refused before anything is allocated.
const MaxHeaderSize = 100 << 20

// metadataKey is the reserved header entry holding the file's string-to-string metadata.
const metadataKey = "__metadata__"

// TensorInfo locates one tensor of a checkpoint: its type, shape and where its bytes are.
type TensorInfo struct {
	Name   string
	DType  DType
	Shape  []int64 // [] for a scalar
	File   string  // path of the shard file holding it
	Offset int64   // absolute byte offset of its data in File
	Size   int64   // bytes
}

// NumElements is the product of the shape (1 for a scalar, 0 when a dimension is 0).
// Shapes are validated on open, so the product does not overflow.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// FormatError reports a malformed safetensors file or index: which file, which tensor
// (empty when the fault is not in one tensor) and what is wrong.
type FormatError struct {
	File   string
	Tensor string
	Reason string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("safetensors %s: tensor %q: %s", e.File, e.Tensor, e.Reason)
	}
	return fmt.Sprintf("safetensors %s: %s", e.File, e.Reason)
}

func formatErr(file, tensor, format string, args ...any) error {
	return &FormatError{File: file, Tensor: tensor, Reason: fmt.Sprintf(format, args...)}
}

// fileHeader is the parsed, validated header of one safetensors file.
type fileHeader struct {
	metadata  map[string]string // nil when the header has none
	tensors   []TensorInfo      // sorted by name; Offset is absolute
	dataStart int64             // 8 + header length
}

// readHeader reads and validates the header of a safetensors file of the given size.
// It reads only the header: 8 bytes, then the JSON. Every error names file.
func readHeader(r io.ReaderAt, size int64, file string) (*fileHeader, error) {
	if size < 8 {
		return nil, formatErr(file, "", "file is %d bytes, too short for the 8-byte header length (truncated?)", size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors %s: read header length: %w", file, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeaderSize {
		return nil, formatErr(file, "", "header length %d exceeds the %d-byte limit (not a safetensors file?)", n, MaxHeaderSize)
	}
	if n < 2 {
		return nil, formatErr(file, "", "header length %d is too short for a JSON object", n)
	}
	if n > uint64(size-8) {
		return nil, formatErr(file, "", "header length %d runs past the end of the %d-byte file (truncated?)", n, size)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, fmt.Errorf("safetensors %s: read %d-byte header: %w", file, n, err)
	}
	dataStart := int64(8 + n)
	return parseHeader(hdr, dataStart, size-dataStart, file)
}

// parseHeader validates the JSON header hdr of a file whose data buffer starts at
// dataStart and holds dataLen bytes.
func parseHeader(hdr []byte, dataStart, dataLen int64, file string) (*fileHeader, error) {
	if len(hdr) == 0 || hdr[0] != '{' {
		return nil, formatErr(file, "", "header does not start with '{' (not a safetensors file?)")
	}
	if !utf8.Valid(hdr) {
		return nil, formatErr(file, "", "header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	if _, err := dec.Token(); err != nil { // the '{' checked above
		return nil, formatErr(file, "", "header JSON: %v", err)
	}
	h := &fileHeader{dataStart: dataStart}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, formatErr(file, "", "header JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, formatErr(file, "", "header JSON: object key is %v, not a string", tok)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, formatErr(file, name, "header JSON: %v", err)
		}
		if seen[name] {
			return nil, formatErr(file, name, "appears twice in the header")
		}
		seen[name] = true
		if name == metadataKey {
			if h.metadata, err = parseMetadata(raw); err != nil {
				return nil, formatErr(file, "", "%s: %v", metadataKey, err)
			}
			continue
		}
		t, err := parseTensorEntry(raw, dataStart, dataLen)
		if err != nil {
			return nil, formatErr(file, name, "%v", err)
		}
		t.Name, t.File = name, file
		h.tensors = append(h.tensors, t)
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, formatErr(file, "", "header JSON: %v", err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return nil, formatErr(file, "", "header JSON: after the object: %v", err)
		}
		return nil, formatErr(file, "", "header JSON: unexpected %v after the object", tok)
	}
	if err := checkLayout(h.tensors, dataStart, dataLen, file); err != nil {
		return nil, err
	}
	slices.SortFunc(h.tensors, func(a, b TensorInfo) int { return strings.Compare(a.Name, b.Name) })
	return h, nil
}

func parseMetadata(raw json.RawMessage) (map[string]string, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, fmt.Errorf("want an object of strings, got %.40s", raw)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("want an object of strings: %v", err)
	}
	return m, nil
}

// parseTensorEntry checks one {"dtype", "shape", "data_offsets"} entry and returns its
// TensorInfo (without Name and File). Unknown fields are ignored, as the reference
// implementation does; the three known ones are matched case-sensitively.
func parseTensorEntry(raw json.RawMessage, dataStart, dataLen int64) (TensorInfo, error) {
	var t TensorInfo
	if raw[0] != '{' {
		return t, fmt.Errorf("entry is %.40s, not an object", raw)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return t, fmt.Errorf("entry: %v", err)
	}
	dtRaw, okD := fields["dtype"]
	shapeRaw, okS := fields["shape"]
	offRaw, okO := fields["data_offsets"]
	switch {
	case !okD:
		return t, fmt.Errorf("entry has no dtype")
	case !okS:
		return t, fmt.Errorf("entry has no shape")
	case !okO:
		return t, fmt.Errorf("entry has no data_offsets")
	}
	var dt string
	if len(dtRaw) == 0 || dtRaw[0] != '"' || json.Unmarshal(dtRaw, &dt) != nil || dt == "" {
		return t, fmt.Errorf("dtype %.40s is not a non-empty string", dtRaw)
	}
	t.DType = DType(dt)

	dims, err := integerArray(shapeRaw, "shape")
	if err != nil {
		return t, err
	}
	t.Shape = make([]int64, len(dims))
	for i, d := range dims {
		v, err := strconv.ParseInt(string(d), 10, 64)
		if err != nil {
			return t, fmt.Errorf("shape %s: dimension %d is %s, not an integer in int64 range", shapeRaw, i, d)
		}
		if v < 0 {
			return t, fmt.Errorf("shape %s: negative dimension %d", shapeRaw, v)
		}
		t.Shape[i] = v
	}
	elems, ok := shapeProduct(t.Shape)
	if !ok {
		return t, fmt.Errorf("shape %s: element count overflows int64", shapeRaw)
	}

	offs, err := integerArray(offRaw, "data_offsets")
	if err != nil {
		return t, err
	}
	if len(offs) != 2 {
		return t, fmt.Errorf("data_offsets %s: want [begin, end]", offRaw)
	}
	var be [2]uint64
	for i, o := range offs {
		if be[i], err = strconv.ParseUint(string(o), 10, 64); err != nil {
			return t, fmt.Errorf("data_offsets %s: %s is not a non-negative integer", offRaw, o)
		}
	}
	begin, end := be[0], be[1]
	if begin > end {
		return t, fmt.Errorf("data_offsets [%d, %d]: begin after end", begin, end)
	}
	if end > uint64(dataLen) {
		return t, fmt.Errorf("data_offsets [%d, %d] run past the end of the %d-byte data buffer (truncated file?)", begin, end, dataLen)
	}
	t.Offset = dataStart + int64(begin)
	t.Size = int64(end - begin)
	if size := t.DType.Size(); size > 0 {
		hi, lo := bits.Mul64(uint64(elems), uint64(size))
		if hi != 0 || lo != uint64(t.Size) {
			return t, fmt.Errorf("%s %v needs %d×%d bytes, data_offsets [%d, %d] give %d", t.DType, t.Shape, elems, size, begin, end, t.Size)
		}
	}
	return t, nil
}

// integerArray splits a JSON array into its raw elements; each must be a number literal
// (strings, nulls and nested values are refused by the integer parse that follows).
func integerArray(raw json.RawMessage, what string) ([]json.RawMessage, error) {
	if len(raw) == 0 || raw[0] != '[' {
		return nil, fmt.Errorf("%s %.40s is not an array", what, raw)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	return elems, nil
}

// shapeProduct multiplies the dimensions, reporting false on int64 overflow. A zero
// dimension makes the product 0 whatever the others are.
func shapeProduct(shape []int64) (int64, bool) {
	if slices.Contains(shape, 0) {
		return 0, true
	}
	n := uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > 1<<63-1 {
			return 0, false
		}
		n = lo
	}
	return int64(n), true
}

// checkLayout enforces the safetensors rule that tensors tile the data buffer exactly:
// sorted by offset, each begins where the previous ends (no overlap, no hole), and the
// last ends at the end of the buffer (no trailing bytes).
func checkLayout(tensors []TensorInfo, dataStart, dataLen int64, file string) error {
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ta, tb := &tensors[a], &tensors[b]
		return cmp.Or(cmp.Compare(ta.Offset, tb.Offset), cmp.Compare(ta.Size, tb.Size), strings.Compare(ta.Name, tb.Name))
	})
	pos := int64(0) // relative to dataStart
	prev := ""
	for _, i := range order {
		t := &tensors[i]
		begin, end := t.Offset-dataStart, t.Offset-dataStart+t.Size
		switch {
		case begin < pos:
			return formatErr(file, t.Name, "data [%d, %d] overlaps tensor %q, which ends at %d", begin, end, prev, pos)
		case begin > pos:
			if prev == "" {
				return formatErr(file, t.Name, "data begins at %d, leaving a hole of %d bytes at the start of the data buffer", begin, begin-pos)
			}
			return formatErr(file, t.Name, "data begins at %d, leaving a hole of %d bytes after tensor %q", begin, begin-pos, prev)
		}
		pos, prev = end, t.Name
	}
	if pos != dataLen {
		return formatErr(file, "", "tensors cover %d bytes but the data buffer has %d: %d unindexed trailing bytes", pos, dataLen, dataLen-pos)
	}
	return nil
}

// headerEntry is one tensor as the writer lays it out: offsets relative to the data buffer.
type headerEntry struct {
	name       string
	dtype      DType
	shape      []int64
	begin, end int64
}

// encodeHeader renders a safetensors header: "__metadata__" first (when non-empty, keys
// sorted), then the tensors sorted by name, padded with spaces to a multiple of 8 bytes.
// The same input always gives the same bytes. The result is the 8-byte length plus JSON.
func encodeHeader(metadata map[string]string, entries []headerEntry) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 8)) // length, filled in below
	b.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			b.WriteByte(',')
		}
		first = false
	}
	if len(metadata) > 0 {
		sep()
		writeJSONString(&b, metadataKey)
		b.WriteString(":{")
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
	}
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b headerEntry) int { return strings.Compare(a.name, b.name) })
	for _, e := range sorted {
		sep()
		writeJSONString(&b, e.name)
		b.WriteString(`:{"dtype":`)
		writeJSONString(&b, string(e.dtype))
		b.WriteString(`,"shape":[`)
		for i, d := range e.shape {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(d, 10))
		}
		b.WriteString(`],"data_offsets":[`)
		b.WriteString(strconv.FormatInt(e.begin, 10))
		b.WriteByte(',')
		b.WriteString(strconv.FormatInt(e.end, 10))
		b.WriteString("]}")
	}
	b.WriteByte('}')
	for (b.Len()-8)%8 != 0 {
		b.WriteByte(' ')
	}
	out := b.Bytes()
	binary.LittleEndian.PutUint64(out[:8], uint64(len(out)-8))
	return out
}

// writeJSONString writes s as a JSON string without HTML escaping. Names are validated
// as UTF-8 before they get here.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // cannot fail for a string; Encode appends a newline
	b.Truncate(b.Len() - 1)
}
