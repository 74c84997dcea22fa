package kernels

// Optional extensions of Backend. A backend implements one by having its
// methods; a caller type-asserts (be.(kernels.RowCopier)) and, when the
// backend lacks it, falls back to a composition of Backend operations (the
// model package does). Backend itself is unchanged, so a backend that
// implements none of them is still complete. Each extension is checked,
// on every backend that has it, by conformance.RunExtensions.

// RowCopier moves whole rows: splicing image rows into token embeddings,
// gathering embedding rows by token id, and writing new keys, values and
// conv inputs into the caches of incremental decoding.
type RowCopier interface {
	// CopyRows copies n rows: row dstRow+i of dst gets row srcRow+i of src,
	// both seen as [rows, cols] matrices (leading dimensions flattened) of
	// the same cols. dst is F32; src is F32 or BF16 (widened exactly). When
	// dst and src are the same tensor the two row ranges must not overlap.
	// n = 0 is allowed and does nothing.
	CopyRows(dst Tensor, dstRow int, src Tensor, srcRow, n int) error
	// GatherRows writes row i of out [rows, cols] (leading dimensions
	// flattened) from row ids[i] of table [vocab, cols], which is F32 or
	// BF16 (widened exactly). len(ids) must equal rows; an id outside
	// [0, vocab) is an error and nothing is written.
	GatherRows(out, table Tensor, ids []int32) error
}

// CachedAttention is softmax attention of a few new queries against a
// longer key/value cache, for incremental decoding.
type CachedAttention interface {
	// SoftmaxAttentionCached: q [b, lq, H, p] holds the queries of
	// positions pos0 … pos0+lq−1; k and v [b, capacity, Hkv, p] hold the keys
	// and values of positions 0 … pos0+lq−1 in their first pos0+lq rows
	// (capacity ≥ pos0+lq; later rows are ignored, whatever they hold).
	// Causal: the query of position pos0+i attends to keys s ≤ pos0+i with
	// weights softmax_s(scale·q·k_s). out [b, lq, H, p]; head h reads kv head
	// h/(H/Hkv) as in SoftmaxAttention. With pos0 = 0 and capacity = lq it
	// is SoftmaxAttention(out, q, k, v, scale, true).
	SoftmaxAttentionCached(out, q, k, v Tensor, pos0 int, scale float32) error
}
