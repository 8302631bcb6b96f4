# Tiny random-weight GGUF models for the tests, written at build time by make-tiny-gguf into
# KVLENS_TEST_MODELS_DIR. Tokenizers come from llama.cpp's vocab-only GGUFs when its source tree is at hand;
# with an installed llama.cpp package the tool's built-in byte-level tokenizer stands in.
#
# All four: F32 layer weights (token_embd/output F16), n_embd 64, 4 heads, 2 KV heads, head_dim 16, n_ff 128.
#   tiny-llama.gguf       llama, 2 layers, seed 1, Llama 3 vocab and template
#   tiny-qwen2.gguf       qwen2, 2 layers, seed 2, Qwen2 vocab, ChatML template
#   tiny-qwen3.gguf       qwen3, 3 layers, seed 3, Qwen2 vocab + Qwen3's added tokens (<think>, </think>)
#   tiny-llama-q8_0.gguf  tiny-llama.gguf quantized to Q8_0 (same seed, so the same weights before rounding)
# tools/tiny_gguf/tiny_gguf_test.cpp checks these shapes: change both together.

set(_kvlens_vocab_dir "${KVLENS_LLAMA_TREE}/models")
set(KVLENS_TINY_HAVE_VOCAB 0)
if(KVLENS_LLAMA_TREE AND EXISTS "${_kvlens_vocab_dir}/ggml-vocab-qwen2.gguf"
   AND EXISTS "${_kvlens_vocab_dir}/ggml-vocab-llama-bpe.gguf")
  set(KVLENS_TINY_HAVE_VOCAB 1)
  message(STATUS "kvlens: tiny test models use the vocabularies in ${_kvlens_vocab_dir}")
else()
  message(STATUS "kvlens: no llama.cpp vocab files; tiny test models use the built-in tokenizer")
endif()

file(MAKE_DIRECTORY ${KVLENS_TEST_MODELS_DIR})
set(_kvlens_tiny_models)

# kvlens_tiny_model(<file> <vocab file in llama.cpp/models> <make-tiny-gguf args>...)
function(kvlens_tiny_model file vocab)
  set(out ${KVLENS_TEST_MODELS_DIR}/${file})
  set(vocab_args)
  set(vocab_file)
  if(KVLENS_TINY_HAVE_VOCAB)
    set(vocab_file ${_kvlens_vocab_dir}/${vocab})
    set(vocab_args --vocab ${vocab_file})
  endif()
  add_custom_command(
    OUTPUT ${out}
    COMMAND make-tiny-gguf --out ${out} ${vocab_args} ${ARGN}
    DEPENDS make-tiny-gguf ${vocab_file}
    COMMENT "Generating test model ${file}"
    VERBATIM)
  set(_kvlens_tiny_models ${_kvlens_tiny_models} ${out} PARENT_SCOPE)
endfunction()

set(_kvlens_tiny_shape --embd 64 --heads 4 --heads-kv 2 --head-dim 16 --ff 128 --ctx 512 --type f32)
kvlens_tiny_model(tiny-llama.gguf ggml-vocab-llama-bpe.gguf --arch llama --layers 2 --seed 1 ${_kvlens_tiny_shape})
kvlens_tiny_model(tiny-qwen2.gguf ggml-vocab-qwen2.gguf --arch qwen2 --layers 2 --seed 2 ${_kvlens_tiny_shape})
kvlens_tiny_model(tiny-qwen3.gguf ggml-vocab-qwen2.gguf --arch qwen3 --layers 3 --seed 3 ${_kvlens_tiny_shape})
kvlens_tiny_model(tiny-llama-q8_0.gguf ggml-vocab-llama-bpe.gguf --arch llama --layers 2 --seed 1
                  ${_kvlens_tiny_shape} --quantize q8_0)
add_custom_target(tiny-models ALL DEPENDS ${_kvlens_tiny_models})

# The test needs llama.cpp only, so it does not wait for the kvlens library.
add_executable(tiny_gguf_test ${PROJECT_SOURCE_DIR}/tools/tiny_gguf/tiny_gguf_test.cpp)
set_target_properties(tiny_gguf_test PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
target_link_libraries(tiny_gguf_test PRIVATE llama ggml GTest::gtest GTest::gtest_main)
target_compile_options(tiny_gguf_test PRIVATE ${KVLENS_WARNINGS})
target_compile_definitions(tiny_gguf_test PRIVATE KVLENS_TEST_MODELS_DIR="${KVLENS_TEST_MODELS_DIR}"
                                                  KVLENS_BIN_DIR="${CMAKE_BINARY_DIR}/bin"
                                                  KVLENS_TINY_HAVE_VOCAB=${KVLENS_TINY_HAVE_VOCAB})
add_dependencies(tiny_gguf_test tiny-models)
gtest_discover_tests(tiny_gguf_test TEST_PREFIX "tiny_gguf." DISCOVERY_TIMEOUT 60 PROPERTIES LABELS unit)
