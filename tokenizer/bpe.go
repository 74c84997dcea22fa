package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is the byte-pair-encoding model: a word starts as one symbol per character (or per byte with
// byte fallback) and the pair with the lowest merge rank is merged until none applies.
type bpe struct {
	vocab        map[string]int
	idToTok      []string // by id; "" where no token has the id
	hasID        []bool
	merges       map[uint64]mergeRule // key: left id << 32 | right id
	unkID        int                  // -1: no unknown token
	fuseUnk      bool
	byteFallback bool
	byteIDs      [256]int // ids of "<0x00>".."<0xFF>", -1 where absent
	ignoreMerges bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix

	cacheMu sync.RWMutex
	cache   map[string][]int
}

type mergeRule struct {
	rank  int
	newID int
}

const (
	bpeCacheCapacity = 10000 // the library's default
	bpeCacheMaxWord  = 256   // longer words are not cached
)

func pairKey(a, b int) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func parseModel(m json.RawMessage) (*bpe, error) {
	typ, err := componentType(m)
	if err != nil {
		return nil, err
	}
	var c struct {
		Dropout                 *float64          `json:"dropout"`
		UnkToken                *string           `json:"unk_token"`
		ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
		FuseUnk                 bool              `json:"fuse_unk"`
		ByteFallback            bool              `json:"byte_fallback"`
		IgnoreMerges            bool              `json:"ignore_merges"`
		Vocab                   map[string]int    `json:"vocab"`
		Merges                  []json.RawMessage `json:"merges"`
	}
	if typ == "" {
		// Old files omit the type; only BPE has merges.
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(m, &probe); err != nil {
			return nil, err
		}
		if _, ok := probe["merges"]; ok {
			typ = "BPE"
		}
	}
	if typ != "BPE" {
		if typ == "" {
			typ = "(untyped, without merges)"
		}
		return nil, fmt.Errorf("model %s is not supported (supported: BPE)", typ)
	}
	if err := json.Unmarshal(m, &c); err != nil {
		return nil, fmt.Errorf("BPE: %w", err)
	}
	if c.Dropout != nil && *c.Dropout != 0 {
		return nil, fmt.Errorf("BPE: dropout %g is not supported (encoding would be random)", *c.Dropout)
	}
	if len(c.Vocab) == 0 {
		return nil, errors.New("BPE: empty vocab")
	}
	b := &bpe{
		vocab:        c.Vocab,
		unkID:        -1,
		fuseUnk:      c.FuseUnk,
		byteFallback: c.ByteFallback,
		ignoreMerges: c.IgnoreMerges,
		cache:        make(map[string][]int),
	}
	maxID := -1
	for tok, id := range c.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("BPE: token %q has negative id %d", tok, id)
		}
		maxID = max(maxID, id)
	}
	b.idToTok = make([]string, maxID+1)
	b.hasID = make([]bool, maxID+1)
	for tok, id := range c.Vocab {
		if b.hasID[id] {
			return nil, fmt.Errorf("BPE: id %d is used by both %q and %q", id, b.idToTok[id], tok)
		}
		b.idToTok[id], b.hasID[id] = tok, true
	}
	if c.UnkToken != nil {
		id, ok := c.Vocab[*c.UnkToken]
		if !ok {
			return nil, fmt.Errorf("BPE: unk_token %q is not in the vocab", *c.UnkToken)
		}
		b.unkID = id
	}
	if c.ContinuingSubwordPrefix != nil {
		b.prefix = *c.ContinuingSubwordPrefix
	}
	if c.EndOfWordSuffix != nil {
		b.suffix = *c.EndOfWordSuffix
	}
	for i := range b.byteIDs {
		b.byteIDs[i] = -1
		if id, ok := c.Vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
			b.byteIDs[i] = id
		}
	}
	b.merges = make(map[uint64]mergeRule, len(c.Merges))
	for rank, raw := range c.Merges {
		left, right, err := parseMerge(raw)
		if err != nil {
			return nil, fmt.Errorf("BPE: merges[%d]: %w", rank, err)
		}
		a, ok := c.Vocab[left]
		if !ok {
			return nil, fmt.Errorf("BPE: merges[%d]: %q is not in the vocab", rank, left)
		}
		bb, ok := c.Vocab[right]
		if !ok {
			return nil, fmt.Errorf("BPE: merges[%d]: %q is not in the vocab", rank, right)
		}
		if len(right) < len(b.prefix) {
			return nil, fmt.Errorf("BPE: merges[%d]: %q is shorter than the continuing_subword_prefix", rank, right)
		}
		merged := left + right[len(b.prefix):]
		n, ok := c.Vocab[merged]
		if !ok {
			return nil, fmt.Errorf("BPE: merges[%d]: the merged token %q is not in the vocab", rank, merged)
		}
		// A repeated pair keeps its last rank, as the library's map does.
		b.merges[pairKey(a, bb)] = mergeRule{rank: rank, newID: n}
	}
	return b, nil
}

// parseMerge reads one merge, either "a b" (older files) or ["a", "b"].
func parseMerge(raw json.RawMessage) (string, string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		parts := strings.Split(s, " ")
		if len(parts) != 2 {
			return "", "", fmt.Errorf("%q is not two tokens separated by one space", s)
		}
		return parts[0], parts[1], nil
	}
	var pair []string
	if err := json.Unmarshal(raw, &pair); err != nil {
		return "", "", fmt.Errorf("neither \"a b\" nor [\"a\", \"b\"]: %s", raw)
	}
	if len(pair) != 2 {
		return "", "", fmt.Errorf("%d tokens, want 2", len(pair))
	}
	return pair[0], pair[1], nil
}

func (b *bpe) idToken(id int) (string, bool) {
	if id < 0 || id >= len(b.idToTok) || !b.hasID[id] {
		return "", false
	}
	return b.idToTok[id], true
}

// tokenize appends the ids of word to dst.
func (b *bpe) tokenize(word string, dst []int) []int {
	if word == "" {
		return dst
	}
	if b.ignoreMerges {
		if id, ok := b.vocab[word]; ok {
			return append(dst, id)
		}
	}
	cacheable := len(word) <= bpeCacheMaxWord
	if cacheable {
		b.cacheMu.RLock()
		ids, ok := b.cache[word]
		b.cacheMu.RUnlock()
		if ok {
			return append(dst, ids...)
		}
	}
	start := len(dst)
	dst = b.mergeWord(word, dst)
	if cacheable {
		ids := append([]int(nil), dst[start:]...)
		b.cacheMu.Lock()
		if len(b.cache) < bpeCacheCapacity {
			b.cache[word] = ids
		}
		b.cacheMu.Unlock()
	}
	return dst
}

// tokenizeBytes is tokenize for a word held in a reused buffer: a cache hit costs no allocation.
func (b *bpe) tokenizeBytes(word []byte, dst []int) []int {
	if len(word) == 0 {
		return dst
	}
	if len(word) <= bpeCacheMaxWord && !b.ignoreMerges {
		b.cacheMu.RLock()
		ids, ok := b.cache[string(word)]
		b.cacheMu.RUnlock()
		if ok {
			return append(dst, ids...)
		}
	}
	return b.tokenize(string(word), dst)
}

// symbol is one node of the word's linked list; size 0 marks a symbol merged into its left neighbour.
type symbol struct {
	id, prev, next, size int
}

// mergeWord splits word into initial symbols and applies the merges (the library's merge_word and
// Word::merge_all, ties between equal ranks broken by position).
func (b *bpe) mergeWord(word string, dst []int) []int {
	syms := make([]symbol, 0, len(word))
	add := func(id, size int) {
		n := len(syms)
		syms = append(syms, symbol{id: id, prev: n - 1, next: -1, size: size})
		if n > 0 {
			syms[n-1].next = n
		}
	}
	unkID, unkSize := -1, 0 // a pending unknown run
	for i := 0; i < len(word); {
		_, w := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+w]
		first, last := i == 0, i+w == len(word)
		i += w
		s := ch
		if !first && b.prefix != "" {
			s = b.prefix + s
		}
		if last && b.suffix != "" {
			s += b.suffix
		}
		if id, ok := b.vocab[s]; ok {
			if unkID >= 0 {
				add(unkID, unkSize)
				unkID = -1
			}
			add(id, len(ch))
			continue
		}
		if b.byteFallback && b.hasAllBytes(s) {
			// Like the library, a pending unknown run is not flushed before the byte tokens.
			for j := 0; j < len(s); j++ {
				add(b.byteIDs[s[j]], 1)
			}
			continue
		}
		if b.unkID >= 0 {
			switch {
			case unkID >= 0 && b.fuseUnk:
				unkSize += len(ch)
			case unkID >= 0:
				add(unkID, unkSize)
				unkID, unkSize = b.unkID, len(ch)
			default:
				unkID, unkSize = b.unkID, len(ch)
			}
		}
	}
	if unkID >= 0 {
		add(unkID, unkSize)
	}
	b.mergeAll(syms)
	for _, s := range syms {
		if s.size != 0 {
			dst = append(dst, s.id)
		}
	}
	return dst
}

func (b *bpe) hasAllBytes(s string) bool {
	for j := 0; j < len(s); j++ {
		if b.byteIDs[s[j]] < 0 {
			return false
		}
	}
	return true
}

// mergeCandidate is a queued merge of syms[pos] with its right neighbour.
type mergeCandidate struct {
	pos, rank, newID int
}

func (c mergeCandidate) less(o mergeCandidate) bool {
	if c.rank != o.rank {
		return c.rank < o.rank
	}
	return c.pos < o.pos
}

// mergeQueue is a binary min-heap of merge candidates by (rank, pos).
type mergeQueue []mergeCandidate

func (q *mergeQueue) push(c mergeCandidate) {
	*q = append(*q, c)
	h := *q
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (q *mergeQueue) pop() mergeCandidate {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l].less(h[m]) {
			m = l
		}
		if r < n && h[r].less(h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}

func (b *bpe) mergeAll(syms []symbol) {
	if len(syms) < 2 {
		return
	}
	q := make(mergeQueue, 0, len(syms))
	for i := 0; i+1 < len(syms); i++ {
		if m, ok := b.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			q.push(mergeCandidate{pos: i, rank: m.rank, newID: m.newID})
		}
	}
	for len(q) > 0 {
		top := q.pop()
		cur := &syms[top.pos]
		if cur.size == 0 || cur.next < 0 {
			continue
		}
		next := cur.next
		right := syms[next]
		// Skip stale entries: the pair at this position changed since it was queued.
		if m, ok := b.merges[pairKey(cur.id, right.id)]; !ok || m.newID != top.newID {
			continue
		}
		cur.id = top.newID
		cur.size += right.size
		cur.next = right.next
		syms[next].size = 0
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if m, ok := b.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				q.push(mergeCandidate{pos: cur.prev, rank: m.rank, newID: m.newID})
			}
		}
		if cur.next >= 0 {
			if m, ok := b.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				q.push(mergeCandidate{pos: top.pos, rank: m.rank, newID: m.newID})
			}
		}
	}
}

// resetCache empties the word cache (benchmarks use it to measure uncached encoding).
func (b *bpe) resetCache() {
	b.cacheMu.Lock()
	clear(b.cache)
	b.cacheMu.Unlock()
}
