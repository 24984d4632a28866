"""Compile charlm.decode_kernel's kernels for sm_90 (H100, H200) without a GPU; prints what compiled.

    python -m tests.charlm.kernel_compile    (TRITON_INTERPRET unset)
"""

from __future__ import annotations

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from triton.runtime.jit import JITFunction

from charlm import decode_kernel

TARGET = GPUTarget("cuda", 90, 32)
TYPES = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "lengths_ptr": "*i64", "out_ptr": "*bf16",
         "part_acc_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32", "scale": "fp32"}


def compiled(kernel: JITFunction, constants: dict[str, int]) -> bool:
    """Whether `kernel` compiles to a cubin: pointers and floats typed as in TYPES, the other
    arguments 32-bit integers, the constants given."""
    names = kernel.arg_names
    signature = {name: "constexpr" if name in constants else TYPES.get(name, "i32") for name in names}
    source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constants.items()})
    return bool(compile(source, target=TARGET).asm["cubin"])


def main() -> None:
    attend, combine = JITFunction(decode_kernel._attend), JITFunction(decode_kernel._combine)
    for splits in (1, 4):
        constants = {"HEAD_DIM": 64, "BLOCK_D": 64, "BLOCK_N": decode_kernel.BLOCK_N, "SPLITS": splits}
        if compiled(attend, constants):
            print(f"attend-{splits}")
    if compiled(combine, {"HEAD_DIM": 64, "BLOCK_D": 64, "SPLITS": 4, "BLOCK_S": 4}):
        print("combine-4")


if __name__ == "__main__":
    main()
