# ggml's CPU kernels that are wrong on this project's machine: off unless KVLENS_GGML_AVX512_KERNELS=ON.
#
# With GGML_NATIVE, -march=native enables them by itself on AVX512 + AMX Xeons (Sapphire Rapids and later). On
# such a machine (this project's 2-core VM, 2026-12-07) the pinned llama.cpp
#   - segfaults in ggml_backend_amx_mul_mat on the first decode of every quantised model we use (SmolLM2 Q4_1,
#     Qwen2.5 Q4_K_M): llama.cpp issue #20824, closed stale without a fix; dspy dropped its AMX build for the
#     same crash (stanfordnlp/dspy#10079);
#   - with AMX off, returns constant logits for Qwen2.5-Coder-1.5B's prompts from the AVX512BW code of its
#     repacked Q4_K matrix-matrix kernels (greedy output "!][label000..."); AVX512 on with repacking off, or
#     repacking on without AVX512BW, gives the plain kernels' logits (src/engine/kernels_test.cpp).
# -mno-amx-* -mno-avx512bw after -march=native undefine __AMX_INT8__ and __AVX512BW__ in ggml-cpu only: no AMX
# buffer type, and the repacked kernels take their AVX2 code, as on every AVX2 machine. The rest of ggml-cpu keeps
# AVX512F. (AMX code needs AVX512BW: the two go together.)
#
# Used twice: by kvlens' own build after add_subdirectory(llama.cpp), and by bench/build_llama_tools.sh as
# -DCMAKE_PROJECT_llama.cpp_INCLUDE=<this file> so that llama-bench / llama-server get the same kernels.
include_guard(GLOBAL)
include(CheckCXXCompilerFlag)

function(kvlens_ggml_cpu_flags)
  if(NOT TARGET ggml-cpu)
    return()
  endif()
  check_cxx_compiler_flag("-mno-amx-int8 -mno-avx512bw" KVLENS_HAS_MNO_AMX)
  if(KVLENS_HAS_MNO_AMX)
    target_compile_options(ggml-cpu PRIVATE -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -mno-avx512bw)
  endif()
endfunction()

# As a project include of llama.cpp's own build: run once every target of the tree exists.
if(PROJECT_NAME STREQUAL "llama.cpp" AND CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL kvlens_ggml_cpu_flags)
endif()
