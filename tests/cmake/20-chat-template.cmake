# Chat templates and thinking modes; llama.cpp's own renderer (llama_chat_apply_template) is the reference.
kvlens_add_gtest(chat_template_test ${PROJECT_SOURCE_DIR}/src/engine/chat_template_test.cpp)
# The real Jinja templates shipped in llama.cpp's source tree; empty with an installed llama (those tests skip).
if(KVLENS_LLAMA_TREE)
  set(_kvlens_templates_dir "${KVLENS_LLAMA_TREE}/models/templates")
else()
  set(_kvlens_templates_dir "")
endif()
target_compile_definitions(chat_template_test PRIVATE KVLENS_LLAMA_TEMPLATES_DIR="${_kvlens_templates_dir}")
