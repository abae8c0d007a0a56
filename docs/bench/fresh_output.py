# Where the time of the large batch-norm forward goes: the same kernel writing into a fresh array (what
# forward_train does) and into a reused one; a plain copy the same two ways. float32 (64, 128, 64, 64), 2 threads.
import sys, time, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "generated"))
import batch_nchw_numba as m
def med(f, n=11):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3
x = np.random.randn(64, 128, 64, 64).astype(np.float32)
g, b = np.ones(128), np.zeros(128)
xb = x.reshape(64, 128, 4096); y = np.empty_like(xb)
stats = [np.empty(128) for _ in range(3)]
nbytes = 2 * x.nbytes
for name, f in [("forward_train (fresh y)", lambda: m.forward_train(x, g, b)),
                ("same kernel, y reused", lambda: m._train_kernel(xb, g, b, 1e-5, y, *stats)),
                ("numpy copy into a fresh array", lambda: x.copy()),
                ("numpy copy into a reused array", lambda: np.copyto(y, xb))]:
    t = med(f)
    print(f"{name:32s} {t:7.2f} ms  {nbytes / t / 1e6:5.1f} GB/s over 2*E*s")
