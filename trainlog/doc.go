// Package trainlog records a training run: one JSON object per update in
// metrics.jsonl, and a loss-curve PNG drawn from it.
//
// Writer appends one line per Write, straight to the file (no buffering),
// so a crash loses at most the line being written. Resume reopens the log
// of an interrupted run at a checkpoint's step: it drops the lines past
// that step (and a torn last line), so that the resumed run's log reads
// exactly like an uninterrupted run's. Log a step before checkpointing it.
//
// A line (numbers that are NaN or ±Inf are written as the strings "NaN",
// "Infinity", "-Infinity", which Read turns back into floats):
//
//	{"step":120,"epoch":0.0115,"losses":{"kl":0.8125,"l2":41.5,"ce":0,"total":42.3125},
//	 "lr":2.4e-05,"grad_norm":3.25,"tokens_per_s":1875.5,"elapsed_s":613.25}
//
// PlotLosses draws the total loss and each term against the step (a term
// that is zero throughout is left out), with optional exponential smoothing
// over the raw curves and a log y axis when the values span a wide range;
// below it, the gradient norm and the learning rate.
package trainlog
