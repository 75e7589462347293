# Locate cuDNN: CUDNN_ROOT (or $CUDNN_ROOT) first, e.g. a Python wheel's
# site-packages/nvidia/cudnn on the GPU machine, then the CUDA toolkit's own directories.
find_path(CUDNN_INCLUDE_DIR cudnn.h
  HINTS ${CUDNN_ROOT} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9
  HINTS ${CUDNN_ROOT} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
if(CUDNN_INCLUDE_DIR AND CUDNN_LIBRARY)
  add_library(psvae_cudnn INTERFACE)
  target_include_directories(psvae_cudnn INTERFACE ${CUDNN_INCLUDE_DIR})
  target_link_libraries(psvae_cudnn INTERFACE ${CUDNN_LIBRARY})
  set(PSVAE_HAVE_CUDNN ON)
  message(STATUS "psvae: cuDNN ${CUDNN_LIBRARY}")
else()
  set(PSVAE_HAVE_CUDNN OFF)
  message(STATUS "psvae: cuDNN not found (set CUDNN_ROOT); conv falls back to our own kernels")
endif()
