# Layer 1: obtain llama.cpp/ggml and expose the targets `llama` and `ggml`.
#
# Three sources, in order of precedence:
#   -DKVLENS_LLAMA_SOURCE_DIR=/path/to/llama.cpp   a checkout the user has (built with add_subdirectory)
#   -DKVLENS_USE_INSTALLED_LLAMA=ON                an installed package (find_package(llama))
#   default: the pinned source bundle inside the npm package node-llama-cpp (registry tarball, sha256-checked),
#            unpacked once into KVLENS_CACHE_DIR so clean clones reuse it.

set(KVLENS_LLAMA_NPM_VERSION "3.21.1")
set(KVLENS_LLAMA_NPM_SHA256 "7a231d6bafa14142a1cbed9893d4ec5bc6041b2a5f5939a623accaab4203c11f")
set(KVLENS_LLAMA_COMMIT "80fb11ac73e66d89eae2c6a91d8a77428fa733ed") # llama.cpp v0.4.0, ggml 0.23.0
set(KVLENS_LLAMA_NPM_URL
    "https://registry.npmjs.org/node-llama-cpp/-/node-llama-cpp-${KVLENS_LLAMA_NPM_VERSION}.tgz")

function(kvlens_fetch_llama_source out_dir)
  set(root "${KVLENS_CACHE_DIR}/llama.cpp-${KVLENS_LLAMA_COMMIT}")
  if(EXISTS "${root}/.kvlens-verified")
    set(${out_dir} "${root}" PARENT_SCOPE)
    return()
  endif()
  find_package(Git REQUIRED)
  set(tgz "${KVLENS_CACHE_DIR}/node-llama-cpp-${KVLENS_LLAMA_NPM_VERSION}.tgz")
  message(STATUS "kvlens: fetching llama.cpp source bundle from ${KVLENS_LLAMA_NPM_URL}")
  file(DOWNLOAD "${KVLENS_LLAMA_NPM_URL}" "${tgz}" EXPECTED_HASH SHA256=${KVLENS_LLAMA_NPM_SHA256}
       STATUS st TLS_VERIFY ON)
  list(GET st 0 code)
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "kvlens: could not download ${KVLENS_LLAMA_NPM_URL}: ${st}. "
                        "Pass -DKVLENS_LLAMA_SOURCE_DIR=<llama.cpp checkout> instead.")
  endif()
  set(tmp "${KVLENS_CACHE_DIR}/tmp-npm-${KVLENS_LLAMA_COMMIT}")
  file(REMOVE_RECURSE "${tmp}" "${root}")
  file(ARCHIVE_EXTRACT INPUT "${tgz}" DESTINATION "${tmp}" PATTERNS "package/llama/gitRelease.bundle")
  execute_process(COMMAND "${GIT_EXECUTABLE}" clone -q "${tmp}/package/llama/gitRelease.bundle" "${root}"
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "kvlens: git clone of the llama.cpp bundle failed")
  endif()
  execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${root}" rev-parse HEAD OUTPUT_VARIABLE head
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT head STREQUAL KVLENS_LLAMA_COMMIT)
    message(FATAL_ERROR "kvlens: llama.cpp bundle commit ${head} != pinned ${KVLENS_LLAMA_COMMIT}")
  endif()
  file(REMOVE_RECURSE "${tmp}")
  file(WRITE "${root}/.kvlens-verified" "${KVLENS_LLAMA_COMMIT}\n")
  set(${out_dir} "${root}" PARENT_SCOPE)
endfunction()

if(KVLENS_USE_INSTALLED_LLAMA)
  find_package(llama REQUIRED CONFIG)
  find_package(ggml REQUIRED CONFIG)
  if(NOT TARGET ggml AND TARGET ggml::ggml)
    add_library(ggml ALIAS ggml::ggml)
  endif()
  set(KVLENS_LLAMA_ORIGIN "installed package ${llama_DIR}")
  return()
endif()

# KVLENS_LLAMA_TREE: the llama.cpp source tree in use (tests read its vocab files and templates).
if(NOT KVLENS_LLAMA_SOURCE_DIR)
  kvlens_fetch_llama_source(KVLENS_LLAMA_TREE)
  set(KVLENS_LLAMA_ORIGIN "${KVLENS_LLAMA_COMMIT} (v0.4.0, from node-llama-cpp@${KVLENS_LLAMA_NPM_VERSION})")
else()
  set(KVLENS_LLAMA_TREE "${KVLENS_LLAMA_SOURCE_DIR}")
  set(KVLENS_LLAMA_ORIGIN "source dir ${KVLENS_LLAMA_SOURCE_DIR}")
endif()
if(NOT EXISTS "${KVLENS_LLAMA_TREE}/include/llama.h")
  message(FATAL_ERROR "kvlens: ${KVLENS_LLAMA_TREE} is not a llama.cpp source tree (no include/llama.h)")
endif()

# Library only, static (installed shared libs lack RUNPATH), no tools/tests/app.
foreach(opt LLAMA_BUILD_TESTS LLAMA_BUILD_EXAMPLES LLAMA_BUILD_TOOLS LLAMA_BUILD_SERVER LLAMA_BUILD_APP
            LLAMA_BUILD_COMMON LLAMA_BUILD_UI LLAMA_CURL LLAMA_OPENSSL)
  set(${opt} OFF CACHE BOOL "" FORCE)
endforeach()
set(LLAMA_ALL_WARNINGS OFF CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS OFF)
set(GGML_NATIVE ${KVLENS_NATIVE} CACHE BOOL "" FORCE)
if(KVLENS_CUDA)
  set(GGML_CUDA ON CACHE BOOL "" FORCE)
endif()

add_subdirectory("${KVLENS_LLAMA_TREE}" "${CMAKE_BINARY_DIR}/_deps/llama.cpp" EXCLUDE_FROM_ALL SYSTEM)

# ggml's AMX and AVX512BW kernels are wrong on AVX512 + AMX Xeons (cmake/KvlensGgmlCpuFlags.cmake): off unless
# asked.
option(KVLENS_GGML_AVX512_KERNELS
       "with KVLENS_NATIVE, let ggml use its AMX and AVX512BW kernels (crash / garbage on some Xeons)" OFF)
include(${CMAKE_CURRENT_LIST_DIR}/KvlensGgmlCpuFlags.cmake)
if(NOT KVLENS_GGML_AVX512_KERNELS)
  kvlens_ggml_cpu_flags()
endif()
