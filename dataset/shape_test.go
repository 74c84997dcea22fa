package dataset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kindClass names the kind of a JSON value from its first byte (0: absent).
func kindClass(c byte) string {
	if c == 0 {
		return "absent"
	}
	return jsonKind(c)
}

// valueClass names the kind of a value decoded by encoding/json.
func valueClass(v any, present bool) string {
	if !present {
		return "absent"
	}
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case nil:
		return "null"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// describeShape renders what recordShape.read found.
func describeShape(s *recordShape) string {
	id, _ := recordID(s.id)
	var img string
	if len(s.image) > 0 && s.image[0] == '"' {
		json.Unmarshal(s.image, &img)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s id=%s:%q image=%s:%q conversations=%s", kindClass(s.kind), kindClass(firstByte(s.id)), id,
		kindClass(firstByte(s.image)), img, kindClass(s.conversations))
	for _, t := range s.turns {
		fmt.Fprintf(&b, " [%s from=%s human=%v value=%s]", kindClass(t.kind), kindClass(t.from), t.human, kindClass(t.value))
	}
	return b.String()
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// referenceShape renders the same from encoding/json's decoding of the record.
func referenceShape(t testing.TB, text []byte) string {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("reference decode of %s: %v", text, err)
	}
	rec, isObject := v.(map[string]any)
	kind := valueClass(v, true)
	if !isObject {
		return fmt.Sprintf("%s id=absent:\"\" image=absent:\"\" conversations=absent", kind)
	}
	idV, idOK := rec["id"]
	id := ""
	switch x := idV.(type) {
	case string:
		id = x
	case json.Number:
		id = x.String()
	}
	imgV, imgOK := rec["image"]
	img, _ := imgV.(string)
	convV, convOK := rec["conversations"]
	var b strings.Builder
	fmt.Fprintf(&b, "%s id=%s:%q image=%s:%q conversations=%s", kind, valueClass(idV, idOK), id, valueClass(imgV, imgOK), img, valueClass(convV, convOK))
	turns, _ := convV.([]any)
	for _, tv := range turns {
		turn, ok := tv.(map[string]any)
		if !ok {
			fmt.Fprintf(&b, " [%s from=absent human=false value=absent]", valueClass(tv, true))
			continue
		}
		from, fromOK := turn["from"]
		value, valueOK := turn["value"]
		fmt.Fprintf(&b, " [an object from=%s human=%v value=%s]", valueClass(from, fromOK), from == "human", valueClass(value, valueOK))
	}
	return b.String()
}

// randomJSON draws a JSON value of the kinds LLaVA records are made of, with awkward strings.
func randomJSON(r stream, depth int) any {
	strs := []string{"human", "gpt", "", `with "quotes" and \ backslashes\`, "tab\tnew\nline", "<image>\n…", "\u2028", "human\\"}
	switch k := r.below(7); {
	case k == 0 || depth > 2:
		return strs[r.below(uint64(len(strs)))]
	case k == 1:
		return json.Number(fmt.Sprint(int(r.below(2000)) - 1000))
	case k == 2:
		return nil
	case k == 3:
		return r.below(2) == 0
	case k == 4:
		n := int(r.below(4))
		a := make([]any, n)
		for i := range a {
			a[i] = randomJSON(r, depth+1)
		}
		return a
	default:
		keys := []string{"from", "value", "id", "image", "conversations", "model", "From"}
		m := map[string]any{}
		for n := int(r.below(4)); n > 0; n-- {
			m[keys[r.below(uint64(len(keys)))]] = randomJSON(r, depth+1)
		}
		return m
	}
}

// randomRecord draws a record, mostly well formed, sometimes not.
func randomRecord(r stream) any {
	if r.below(10) == 0 {
		return randomJSON(r, 0)
	}
	rec := map[string]any{}
	if r.below(4) != 0 {
		rec["id"] = randomJSON(r, 2)
	}
	if r.below(2) == 0 {
		rec["image"] = randomJSON(r, 2)
	}
	if r.below(8) == 0 {
		rec["conversations"] = randomJSON(r, 1)
	} else {
		var turns []any
		for n := int(r.below(5)); n > 0; n-- {
			if r.below(10) == 0 {
				turns = append(turns, randomJSON(r, 2))
				continue
			}
			turn := map[string]any{}
			if r.below(10) != 0 {
				turn["from"] = []any{"human", "gpt", "system", nil, json.Number("3")}[r.below(5)]
			}
			if r.below(10) != 0 {
				turn["value"] = randomJSON(r, 2)
			}
			turns = append(turns, turn)
		}
		rec["conversations"] = turns
	}
	return rec
}

// TestRecordShape: what the walker reads of a record agrees with encoding/json's decoding, on
// random records written compactly, indented, and with escaped keys and a repeated key.
func TestRecordShape(t *testing.T) {
	r := newStream(1, 77)
	var s recordShape
	for i := 0; i < 3000; i++ {
		text, err := json.Marshal(randomRecord(r))
		if err != nil {
			t.Fatal(err)
		}
		variants := [][]byte{text}
		var ind bytes.Buffer
		json.Indent(&ind, text, " \t", "\r\n  ")
		variants = append(variants, ind.Bytes())
		if bytes.HasPrefix(text, []byte(`{"`)) {
			// An escaped key and a later repeat of "id" (the last one counts, as in encoding/json).
			esc := bytes.Replace(text, []byte(`"conversations"`), []byte(`"\u0063onversations"`), 1)
			repeat := append(bytes.Clone(bytes.TrimSuffix(text, []byte("}"))), `,"id":"last"}`...)
			variants = append(variants, esc, repeat)
		}
		for _, v := range variants {
			if !json.Valid(v) {
				t.Fatalf("invalid test record %s", v)
			}
			s.read(v)
			if got, want := describeShape(&s), referenceShape(t, v); got != want {
				t.Fatalf("record %s:\n got %s\nwant %s", v, got, want)
			}
		}
	}
}

// FuzzRecordShape: on any valid JSON the walker agrees with encoding/json; on anything it ends
// without panicking.
func FuzzRecordShape(f *testing.F) {
	for _, seed := range []string{goodRecords, badRecords, `{"id": 1, "conversations": [{"from": "hu\u006dan", "value": "x"}]}`, `[1, {"a": "\\"}]`, `"\\\""`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s recordShape
		s.read(b)
		if !json.Valid(b) {
			return
		}
		if got, want := describeShape(&s), referenceShape(t, b); got != want {
			t.Fatalf("record %q:\n got %s\nwant %s", b, got, want)
		}
	})
}

// FuzzOpen: Open never panics; on a valid JSON array it counts every element as a record, kept or
// skipped, and each kept record reads back.
func FuzzOpen(f *testing.F) {
	for _, seed := range []string{goodRecords, badRecords, sampleBadRecords, "[]", "[1,", `{"id": 1}` + "\n{}", "[\n{\"conversations\": [{}]}\n] x"} {
		f.Add([]byte(seed))
	}
	tok := loadTok(f, "phi")
	path := filepath.Join(f.TempDir(), "data.json") // each fuzzing process runs one input at a time
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := Open(path, "", Options{Family: "phi", Tokenizer: tok, ImageSize: 16, OnBadRecord: Skip})
		var elems []json.RawMessage
		isArray := json.Unmarshal(b, &elems) == nil && bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("["))
		if err != nil {
			if isArray {
				t.Fatalf("valid array %q: %v", b, err)
			}
			return
		}
		defer d.Close()
		if isArray && d.Records() != len(elems) {
			t.Fatalf("%q: %d records, want %d", b, d.Records(), len(elems))
		}
		if d.Len()+d.Skipped().Total() != d.Records() {
			t.Fatalf("%q: %d kept + %v skipped != %d records", b, d.Len(), d.Skipped().Counts, d.Records())
		}
		for i := 0; i < d.Len(); i++ {
			if _, err := d.Record(i); err != nil {
				t.Fatalf("%q: record %d: %v", b, i, err)
			}
			d.Sample(i) // may be skipped (no image files here); must not panic
		}
	})
}
