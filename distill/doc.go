// Package distill is the backward core of MaTVLM's single-stage
// distillation (SPEC §1): the hybrid student's forward pass with saved
// activations, the losses and their gradients, and the backward pass
// through the trainable paths.
//
// It is written llm.c style, on the CPU, over host float32 slices: one
// plain function per block, named after its maths, forward and backward
// side by side (linear.go, norm.go, activation.go, attention.go, conv.go,
// ssd.go, mixer.go, decoder.go, vision.go). Sums that decide accuracy
// (norms, softmax, the scan's states, conv and bias-gradient sums, losses)
// are float64; matrix products are float32: a Linear's large products run
// on the CPU backend's blocked AVX-512/AVX2 kernels (kernels/cpu, through
// its MatMul), small ones and attention's on gonum's sgemm. Work is spread
// over a bounded pool of goroutines, and every result is independent of
// the number of workers: each output element is computed by one task in a
// fixed order, and cross-task sums are made in a fixed order.
//
// What trains (SPEC §1): the Mamba-2 mixers — in_proj (+bias), conv1d
// weight and bias, dt_bias, A_log, D, the gated norm's weight, out_proj
// (+bias) — and the mlp2x_gelu connector (unless Options.FreezeConnector).
// The vision tower runs forward only. Attention layers, norms, MLPs,
// embeddings and the head are frozen: gradients flow through them to the
// activations, never into their weights.
//
// A training step:
//
//	st, _ := distill.LoadStudent(dir, distill.Options{})
//	st.ZeroGrad()
//	pass, _ := st.Forward(distill.Input{IDs: ids, Pixels: px, LayerInputs: teacherIn}, true)
//	losses, dlogits, dlayers, _ := distill.Objective(distill.DefaultLoss(), pass,
//		distill.Targets{Logits: teacherLogits, LayerOutputs: teacherOut, Labels: labels})
//	_ = st.Backward(pass, dlogits, dlayers)
//	for _, p := range st.Params() { /* AdamW on p.Data with p.Grad */ }
//
// In training, Options.Dropout with an Input.Dropout key applies the
// recipe's residual dropout (see dropout.go); evaluation passes no key.
//
// teacherIn[l] and teacherOut[l] are the teacher's input and output of
// each Mamba layer l (model.ForwardHooked shows them) and teacherLogits its
// logits: the layer term runs the student's layer l on the teacher's input,
// so its gradient reaches that layer's mixer only.
//
// The scan's backward follows SPEC §3's recurrent form: states are saved
// at chunk boundaries (Options.Chunk) and recomputed inside a chunk, and
// the decay gradient comes from the recurrent formula
// da_t = exp(a_t)·⟨G, S_{t−1}⟩, never from a reverse cumulative sum.
// Softmax attention saves each row's log-sum-exp and recomputes the
// probabilities in its backward, so no L×L matrix is kept.
//
// # On a device
//
// DeviceStudent (device*.go) is the Student's twin on a kernels.Backend
// that implements kernels.Trainer: the whole update — the teacher's
// forward pass, the student's forward and backward passes, the losses and
// AdamW — runs on the backend (the GPU; the CPU backend in tests), with
// the same blocks, the same parameter order and names, the same dropout
// masks and the same loss semantics; in float32 precision an update equals
// the host's to float32 rounding. It shares the teacher's frozen weights
// once they are proved byte-equal, keeps the host Params only as mirrors
// for checkpoints and export, and adds bf16 products and activation
// recomputation. TrainOptions.Device (or Backend) selects it; BenchStep
// measures it.
//
// ParallelStudent (parallel.go) is one DeviceStudent a GPU of one host,
// the gradients summed across them by an all-reduce (NCCL) before the same
// optimiser step on each: data-parallel training whose updates are a
// single device's with the same global batch, up to the order of the
// float32 sums. TrainOptions.GPUs (or Ranks) selects it in Train
// (parallel_train.go), with the one-device run's log, checkpoints and
// export; BenchmarkParallelUpdate measures its speed-up.
package distill
