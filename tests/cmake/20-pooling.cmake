# Pooling algebra (src/capture/pooling.cpp): streaming pool vs. a plain reference, and the knob parsers.
kvlens_add_gtest(pooling_test ${PROJECT_SOURCE_DIR}/src/capture/pooling_test.cpp)
