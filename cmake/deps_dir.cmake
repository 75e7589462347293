# Header-only dependencies from PSVAE_DEPS_DIR/include instead of Debian's packages: the GPU
# machine has no apt, so tools/prepare_device_deps.sh copies Debian's headers into a folder that
# travels with the tree. Defines the same targets the packages' CMake configs define.
set(_inc ${PSVAE_DEPS_DIR}/include)
foreach(_h eigen3/Eigen/Core fmt/format.h doctest/doctest.h nlohmann/json.hpp)
  if(NOT EXISTS ${_inc}/${_h})
    message(FATAL_ERROR "PSVAE_DEPS_DIR=${PSVAE_DEPS_DIR}: missing include/${_h}")
  endif()
endforeach()
add_library(Eigen3::Eigen INTERFACE IMPORTED)
set_target_properties(Eigen3::Eigen PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_inc}/eigen3)
# fmt compiled into each user (FMT_HEADER_ONLY): no libfmt to carry.
add_library(fmt::fmt INTERFACE IMPORTED)
set_target_properties(fmt::fmt PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_inc}
                                          INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_inc})
set(DOCTEST_INCLUDE_DIR ${_inc})
