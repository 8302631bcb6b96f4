# `cmake --install <build> --prefix P`: the library, its headers, the llama.cpp/ggml it links and a CMake
# package, so that another project can `find_package(kvlens)` and link `kvlens::kvlens`:
#   P/include/kvlens/kvlens.h     the public API, the only header (it needs none of llama.cpp's or ours)
#   P/lib/libkvlens.a             plus the static llama.cpp/ggml archives it links (bundled llama.cpp only)
#   P/lib/cmake/kvlens/           kvlensConfig.cmake (from cmake/kvlensConfig.cmake.in) + ConfigVersion
#   P/bin/kvlens                  the CLI
#
# llama.cpp is added with add_subdirectory(... EXCLUDE_FROM_ALL), so its own install rules do not run and its
# targets cannot join an install(EXPORT) set (ggml's PUBLIC_HEADER paths are relative to its own directory).
# Instead the package config is written here: every static archive that kvlens links, directly or not, is
# found by walking the targets' INTERFACE_LINK_LIBRARIES, installed as a file and described in the config as
# an imported target kvlens::<name> with the same link interface (dependencies of the tree's own targets
# become kvlens::<dep>; imported ones, e.g. Threads::Threads or OpenMP, are found again with
# find_dependency; plain names such as m and dl are kept). When a dependency cannot be described that way,
# the configure step warns and no package config is installed, rather than one that would not link.
#
# The server (kvlens_server) and the Python bindings are not part of the package.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KVLENS_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/kvlens")

# ---- the library's headers, the library, the CLI -----------------------------------------------------------

# Only the public API: include/kvlens/*.h, which includes nothing of the internals (src/) nor of llama.cpp.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/kvlens/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/kvlens"
        FILES_MATCHING PATTERN "*.h")
install(FILES "$<TARGET_FILE:kvlens>" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(TARGETS kvlens-cli RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
# The datasets, where the installed CLI looks for them (bin/../share/kvlens/configs, util/data_dir.h): the
# configs, the JSONL files their "file" names (../x.jsonl) and their licences (README.md).
install(DIRECTORY "${PROJECT_SOURCE_DIR}/data/" DESTINATION "${CMAKE_INSTALL_DATADIR}/kvlens")

# ---- the link interface, walked ----------------------------------------------------------------------------

# Imported targets the config can find again: name pattern -> the config lines that define them.
set(_kvlens_dep_Threads "find_dependency(Threads)")
set(_kvlens_dep_OpenMP "find_dependency(OpenMP)")
set(_kvlens_dep_nlohmann_json "find_dependency(nlohmann_json 3.11)")
set(_kvlens_dep_CUDA "find_dependency(CUDAToolkit)")
# libzip (linked privately, so a static kvlens needs it too) under a prefix of kvlens's own, so that the
# consumer's LIBZIP_* variables are left alone.
set(_kvlens_dep_LIBZIP [[
find_dependency(PkgConfig)
if(NOT TARGET PkgConfig::kvlens_libzip)
  pkg_check_modules(kvlens_libzip REQUIRED QUIET IMPORTED_TARGET libzip)
endif()]])
set(_kvlens_dep_llama "find_dependency(llama CONFIG)")
set(_kvlens_dep_ggml "find_dependency(ggml CONFIG)")

# The package of an imported target, or "" when unknown.
function(_kvlens_dep_of name out)
  set(pkg "")
  if(name STREQUAL "Threads::Threads")
    set(pkg Threads)
  elseif(name MATCHES "^OpenMP::")
    set(pkg OpenMP)
  elseif(name MATCHES "^nlohmann_json::")
    set(pkg nlohmann_json)
  elseif(name MATCHES "^CUDA::")
    set(pkg CUDA)
  elseif(name STREQUAL "PkgConfig::LIBZIP")
    set(pkg LIBZIP)
  elseif(name STREQUAL "llama")  # KVLENS_USE_INSTALLED_LLAMA: llama.cpp's package names it so
    set(pkg llama)
  elseif(name MATCHES "^ggml::")
    set(pkg ggml)
  endif()
  set(${out} "${pkg}" PARENT_SCOPE)
endfunction()

# Walk state in global properties (the walk recurses through functions): KVLENS_PKG_ARCHIVES (tree targets to
# install and import, kvlens first), KVLENS_PKG_DEPS (packages to find again), KVLENS_PKG_ERRORS,
# KVLENS_PKG_IFACE_<target> (its link interface as the config writes it).
function(_kvlens_error what)
  set_property(GLOBAL APPEND PROPERTY KVLENS_PKG_ERRORS "${what}")
endfunction()

# An imported target: the package that defines it again in the config, and its name there.
function(_kvlens_map_imported item out)
  _kvlens_dep_of("${item}" pkg)
  if(pkg STREQUAL "")
    _kvlens_error("imported target ${item}")
  else()
    set_property(GLOBAL APPEND PROPERTY KVLENS_PKG_DEPS "${pkg}")
  endif()
  set(mapped "${item}")
  if(item STREQUAL "PkgConfig::LIBZIP")
    set(mapped PkgConfig::kvlens_libzip)
  elseif(item STREQUAL "OpenMP::OpenMP_C")
    set(mapped "\${_kvlens_openmp_c}")
  elseif(item STREQUAL "OpenMP::OpenMP_CXX")
    set(mapped "\${_kvlens_openmp_cxx}")
  endif()
  set(${out} "${mapped}" PARENT_SCOPE)
endfunction()

# Maps one item of a link interface to what the installed config says; recurses into tree targets.
# OpenMP::OpenMP_C/_CXX become ${_kvlens_openmp_c}/${_kvlens_openmp_cxx}: a consumer that enables only C++
# has no OpenMP::OpenMP_C, and both name the same runtime.
function(_kvlens_map_item item out)
  set(link_only FALSE)
  if(item MATCHES "^\\$<LINK_ONLY:(.*)>$")
    set(item "${CMAKE_MATCH_1}")
    set(link_only TRUE)
  endif()
  set(mapped "${item}")
  if(item MATCHES "\\$<")
    _kvlens_error("generator expression ${item}")
    set(mapped "")
  elseif(TARGET "${item}")
    get_target_property(aliased "${item}" ALIASED_TARGET)
    if(aliased)
      set(item "${aliased}")
      set(mapped "${item}")
    endif()
    get_target_property(imported "${item}" IMPORTED)
    get_target_property(type "${item}" TYPE)
    if(imported)
      _kvlens_map_imported("${item}" mapped)
    elseif(type STREQUAL "STATIC_LIBRARY")
      set(mapped "kvlens::${item}")
      _kvlens_walk("${item}")
    elseif(type STREQUAL "INTERFACE_LIBRARY" OR type STREQUAL "OBJECT_LIBRARY")
      # An object library's objects are inside the archive that links it; an interface library (e.g.
      # ggml's own OpenMP wrapper) stands for its interface: both contribute their link interface only.
      get_target_property(sub "${item}" INTERFACE_LINK_LIBRARIES)
      set(mapped "")
      if(sub)
        foreach(s ${sub})
          _kvlens_map_item("${s}" m)
          list(APPEND mapped ${m})
        endforeach()
      endif()
    else()
      _kvlens_error("${type} ${item}")
      set(mapped "")
    endif()
  elseif(item MATCHES "::")
    # An imported target of a package found in a subdirectory (ggml's OpenMP): not visible here.
    _kvlens_map_imported("${item}" mapped)
  endif()
  # Plain names (m, dl), flags and paths stay as they are.
  if(link_only)
    set(wrapped "")
    foreach(m ${mapped})
      if(m MATCHES "^\\$<LINK_ONLY:")
        list(APPEND wrapped "${m}")
      else()
        list(APPEND wrapped "$<LINK_ONLY:${m}>")
      endif()
    endforeach()
    set(mapped "${wrapped}")
  endif()
  set(${out} "${mapped}" PARENT_SCOPE)
endfunction()

# Records a tree target (once) and its mapped INTERFACE_LINK_LIBRARIES.
function(_kvlens_walk tgt)
  get_property(seen GLOBAL PROPERTY KVLENS_PKG_ARCHIVES)
  if(tgt IN_LIST seen)
    return()
  endif()
  set_property(GLOBAL APPEND PROPERTY KVLENS_PKG_ARCHIVES "${tgt}")
  get_target_property(libs "${tgt}" INTERFACE_LINK_LIBRARIES)
  set(iface "")
  if(libs)
    foreach(l ${libs})
      _kvlens_map_item("${l}" m)
      list(APPEND iface ${m})
    endforeach()
  endif()
  set_property(GLOBAL PROPERTY KVLENS_PKG_IFACE_${tgt} "${iface}")
endfunction()

_kvlens_walk(kvlens)
get_property(_kvlens_archives GLOBAL PROPERTY KVLENS_PKG_ARCHIVES)
get_property(_kvlens_deps GLOBAL PROPERTY KVLENS_PKG_DEPS)
get_property(_kvlens_walk_errors GLOBAL PROPERTY KVLENS_PKG_ERRORS)
list(REMOVE_DUPLICATES _kvlens_deps)

# ---- the package config ------------------------------------------------------------------------------------

set(KVLENS_CONFIG_DEPS "")
foreach(pkg ${_kvlens_deps})
  string(APPEND KVLENS_CONFIG_DEPS "${_kvlens_dep_${pkg}}\n")
endforeach()
if("OpenMP" IN_LIST _kvlens_deps)
  string(APPEND KVLENS_CONFIG_DEPS [[
if(TARGET OpenMP::OpenMP_CXX)
  set(_kvlens_openmp_cxx OpenMP::OpenMP_CXX)
else()
  set(_kvlens_openmp_cxx OpenMP::OpenMP_C)
endif()
if(TARGET OpenMP::OpenMP_C)
  set(_kvlens_openmp_c OpenMP::OpenMP_C)
else()
  set(_kvlens_openmp_c OpenMP::OpenMP_CXX)
endif()
]])
endif()

# One imported target per archive (the order does not matter: link properties name targets lazily), kvlens
# last.
set(KVLENS_CONFIG_TARGETS "")
list(REMOVE_ITEM _kvlens_archives kvlens)
list(APPEND _kvlens_archives kvlens)
set(KVLENS_INSTALLED_ARCHIVES "")
foreach(t ${_kvlens_archives})
  get_target_property(_out "${t}" OUTPUT_NAME)
  if(NOT _out)
    set(_out "${t}")
  endif()
  set(_file "${CMAKE_STATIC_LIBRARY_PREFIX}${_out}${CMAKE_STATIC_LIBRARY_SUFFIX}")
  list(APPEND KVLENS_INSTALLED_ARCHIVES "${_file}")
  if(NOT t STREQUAL "kvlens")
    install(FILES "$<TARGET_FILE:${t}>" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
  endif()
  # #include <kvlens/kvlens.h>
  set(_inc "\${PACKAGE_PREFIX_DIR}/${CMAKE_INSTALL_INCLUDEDIR}")
  get_property(_iface GLOBAL PROPERTY KVLENS_PKG_IFACE_${t})
  get_target_property(_defs "${t}" INTERFACE_COMPILE_DEFINITIONS)
  if(NOT _defs)
    set(_defs "")
  endif()
  if(_defs MATCHES "\\$<")
    list(APPEND _kvlens_walk_errors "${t}'s compile definitions ${_defs}")
  endif()
  string(APPEND KVLENS_CONFIG_TARGETS
"add_library(kvlens::${t} STATIC IMPORTED)
set_target_properties(kvlens::${t} PROPERTIES
  IMPORTED_LOCATION \"\${PACKAGE_PREFIX_DIR}/${CMAKE_INSTALL_LIBDIR}/${_file}\"
  IMPORTED_LINK_INTERFACE_LANGUAGES \"C;CXX\"
  INTERFACE_INCLUDE_DIRECTORIES \"${_inc}\"
  INTERFACE_COMPILE_DEFINITIONS \"${_defs}\"
  INTERFACE_LINK_LIBRARIES \"${_iface}\")
")
endforeach()
string(APPEND KVLENS_CONFIG_TARGETS "set_property(TARGET kvlens::kvlens PROPERTY INTERFACE_COMPILE_FEATURES cxx_std_17)\n")

# A dependency the config cannot describe (e.g. a GPU backend's): the rest installs, the package config does
# not (it would not link), and the configure step says so.
if(_kvlens_walk_errors)
  list(JOIN _kvlens_walk_errors "; " _e)
  message(WARNING "kvlens: `cmake --install` will not install the CMake package (find_package(kvlens)): "
                  "cmake/KvlensInstall.cmake cannot describe these link dependencies: ${_e}")
  return()
endif()
list(JOIN KVLENS_INSTALLED_ARCHIVES ", " KVLENS_INSTALLED_ARCHIVES)
configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/kvlensConfig.cmake.in" "${PROJECT_BINARY_DIR}/kvlensConfig.cmake"
  INSTALL_DESTINATION "${KVLENS_INSTALL_CMAKEDIR}")
# 0.x: a minor version may break the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/kvlensConfigVersion.cmake"
                                 VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/kvlensConfig.cmake" "${PROJECT_BINARY_DIR}/kvlensConfigVersion.cmake"
        DESTINATION "${KVLENS_INSTALL_CMAKEDIR}")
