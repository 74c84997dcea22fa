package cuda

import (
	"fmt"
)

// Split-key cached attention for decoding (decode_attention.cu): a few
// queries against a long cache, the keys split over many blocks so that
// batch·heads·splits fills the GPU instead of one block a (batch, head)
// walking the whole cache. Same arithmetic as k_softmax_attention (online
// softmax in float32, bf16 k/v widened exactly); only the order of the
// additions differs.

func init() {
	moduleFiles["decode_attention"] = []string{"prelude.cu", "decode_attention.cu"}
}

// decodeSplitMinKeys is the cache length (pos0+lq keys) from which
// SoftmaxAttentionCached with at most decodeSplitMaxQueries queries runs the
// split-key kernels instead of k_softmax_attention. 1024: below it the old
// kernel's single pass is short anyway (the H200 decoded at 82 tok/s at 1K);
// a guess, not a measurement — BenchmarkDecodeAttention compares the two.
// A variable so the tests can lower it.
var decodeSplitMinKeys = 1024

const (
	// decodeSplitMaxQueries is the most queries the split-key kernels take
	// (k_decode_attention_q1 … _q4).
	decodeSplitMaxQueries = 4
	// decodeThreads is DEC_THREADS: 16 groups of 8 lanes, one key each.
	decodeThreads = 128
	// decodeMinChunk is the fewest keys a split gets (4 per group).
	decodeMinChunk = 64
	// decodeMaxSplits bounds the partials buffer and the merge's loop.
	decodeMaxSplits = 1024
	// decodeBlocksPerSM is the grid aimed at: enough blocks a
	// multiprocessor to keep loads in flight while streaming the cache.
	decodeBlocksPerSM = 8
)

// useDecodeSplit says whether SoftmaxAttentionCached takes the split-key
// path for lq queries over lk = pos0+lq keys.
func useDecodeSplit(lq, lk int) bool {
	return lq >= 1 && lq <= decodeSplitMaxQueries && lk >= decodeSplitMinKeys
}

// decodeSplits returns the number of splits S and the keys a split (chunk)
// for lk keys and rows = batch·heads blocks a split on a device of sms
// multiprocessors: S aims at decodeBlocksPerSM·sms blocks in all, each
// split at least decodeMinChunk keys, at most decodeMaxSplits splits, and
// no split empty (S = ceil(lk/chunk)).
func decodeSplits(lk, rows, sms int) (splits, chunk int) {
	target := max(1, decodeBlocksPerSM*sms)
	splits = (target + rows - 1) / rows
	splits = min(splits, lk/decodeMinChunk, decodeMaxSplits)
	splits = max(splits, 1)
	chunk = (lk + splits - 1) / splits
	splits = (lk + chunk - 1) / chunk
	return splits, chunk
}

// decodeAttention runs the split-key kernels for s (checked by
// SoftmaxAttentionCached: s.l queries at positions pos0…, cache of
// kvRows rows). Owner goroutine only.
func (be *Backend) decodeAttention(what string, s *scan, kvRows, pos0 int, scale float32) error {
	if s.l < 1 || s.l > decodeSplitMaxQueries {
		return fmt.Errorf("%s: split-key attention takes 1 to %d queries, not %d", what, decodeSplitMaxQueries, s.l)
	}
	if s.p < 1 || s.p > maxAttentionHead {
		return fmt.Errorf("%s: split-key attention takes head sizes 1 to %d, not %d", what, maxAttentionHead, s.p)
	}
	lk := pos0 + s.l
	splits, chunk := decodeSplits(lk, s.nb*s.h, be.sms)
	dpt := fmt.Sprintf("DEC_DPT=%d", (s.p+7)/8)
	f, err := be.kernel("decode_attention", fmt.Sprintf("k_decode_attention_q%d", s.l), dpt)
	if err != nil {
		return err
	}
	merge, err := be.kernel("decode_attention", "k_decode_merge", dpt)
	if err != nil {
		return err
	}
	rows := s.nb * s.l * s.h
	bytes := uint64(rows) * uint64(splits) * uint64(s.p+2) * 4
	part, err := be.drv.alloc(bytes, be.stream)
	if err != nil {
		return fmt.Errorf("%s: partials of %d splits: %w", what, splits, err)
	}
	defer func() { _ = be.drv.free(part, be.stream) }()
	err = be.launch(what, f, dims{splits, s.nb * s.h, 1}, dims{decodeThreads, 1, 1}, 0,
		devPtr(part), s.C, s.C.bf(), s.B, s.B.bf(), s.x, s.x.bf(), kvRows, pos0, s.h, s.hb, s.p, scale, splits, chunk)
	if err != nil {
		return err
	}
	return be.launch(what+" merge", merge, dims{rows, 1, 1}, dims{decodeThreads, 1, 1}, 0, s.y, devPtr(part), s.p, splits)
}
