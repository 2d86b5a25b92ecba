// Package blocks serves GPUs in the "blocks" shape: every GPU is cut into
// PerGPU (100) time-sliced blocks that the kubelet counts as devices named
// "<GPU-UUID>::<n>" (n = 0…99).
//
// The one rule the package exists to enforce is that a request is never split
// across GPUs: a container asking for k ≤ 100 blocks gets k blocks of a
// single GPU, and k > 100 must be a multiple of 100 and gets k/100 GPUs whole.
// The kubelet knows nothing of that rule — it sees 800 interchangeable
// devices on an 8-GPU node — so the package steers it twice:
//
//   - Prefer (GetPreferredAllocation) picks the IDs: all from one GPU, chosen
//     by the Policy (Binpack: the fullest GPU that still fits; Spread: the
//     emptiest). When no GPU can take the request it returns an error, which
//     makes the kubelet fail admission with our message instead of handing
//     out a silent partial GPU.
//   - Allocate re-checks the set the kubelet actually chose and answers
//     codes.InvalidArgument, naming the GPUs the IDs came from, if it breaks
//     the rule.
//
// The kubelet's available list is the only truth about which blocks are
// free: a Resource keeps no allocation state, so a restarted plugin is
// correct at once. A Resource is an immutable snapshot (devices, health,
// policy); a change of health or configuration builds a new one. Everything
// Prefer and Allocate need is precomputed in NewResource, so they do no I/O
// and allocate little.
//
// What a block isolates, and what it does not: blocks are time-slicing, so
// processes of different containers share the GPU's compute and memory
// without hardware isolation. Allocate sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
// and CUDA_MPS_PINNED_DEVICE_MEM_LIMIT in proportion to the blocks; they take
// effect only when an MPS control daemon serves the GPU and are ignored
// otherwise.
package blocks
