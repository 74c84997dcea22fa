// Package optim holds the distillation trainer's optimiser, llm.c style:
// plain functions over float32 master weights and their gradients, no
// framework and no global state.
//
//   - AdamW is PyTorch's torch.optim.AdamW (decoupled weight decay
//     θ ← θ·(1 − lr·wd) before the moment update, bias-corrected moments,
//     ε added to the corrected square root), with float32 moments and the
//     arithmetic of each element in float64, rounded once.
//   - ClipGlobalNorm is torch.nn.utils.clip_grad_norm_ over all parameters
//     at once; GlobalNorm measures without clipping; ZeroGrad clears.
//   - Schedules (Constant, Warmup, Cosine, WSD) are pure functions of the
//     number of updates already made, written after transformers'
//     schedule lambdas (see WSD for the one the MaTVLM recipe uses).
//   - AdamW.Save/Load (and MarshalBinary/UnmarshalBinary, SaveFile/LoadFile)
//     keep the moments and step count in a versioned, CRC-32C-checked
//     binary form, so that a resumed run continues bit for bit.
//
// Work is split into fixed chunks of parameters' elements and spread over
// a bounded set of goroutines. Results never depend on the number of
// workers: every element is updated by itself, and the norm's partial sums
// are taken per fixed chunk and added in chunk order.
//
// A training step:
//
//	opt := optim.Recipe()                // lr 2e-4, betas (0.9, 0.95), eps 1e-8, wd 0.01
//	sched := optim.WSD{Peak: opt.LR, WarmupSteps: 1000, DecaySteps: 1000, TotalSteps: 10396}
//	for step := 0; step < total; step++ {
//		optim.ZeroGrad(params)
//		// … forward, backward: gradients accumulate into params[i].Grad …
//		norm, err := optim.ClipGlobalNorm(params, 0.1) // err: a NaN/Inf gradient, nothing changed
//		if err := opt.Step(params, sched.LR(step)); err != nil { … }
//	}
package optim
