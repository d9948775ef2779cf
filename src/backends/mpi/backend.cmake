# The mpi backend's part of the build, included by the top CMakeLists.txt with every
# src/backends/*/backend.cmake: on by default when an MPI C library is found (docs/mpi.md).
# A backend's file says whether it is built and what it brings: PAR_BACKEND_EXCLUDE (source
# paths to leave out when it is not built), PAR_BACKEND_LIBS and PAR_BACKEND_DEFINES (for
# libpar), PAR_BACKEND_PC_REQUIRES / PAR_BACKEND_PC_LIBS (par.pc, static users) and
# PAR_BACKEND_DEB_DEV_DEPENDS (the libpar-dev package).
find_package(MPI COMPONENTS C QUIET)
option(PAR_WITH_MPI "Build the mpi backend (default: ON when an MPI C library is found)"
       ${MPI_C_FOUND})
if(PAR_WITH_MPI AND NOT MPI_C_FOUND)
  message(FATAL_ERROR "PAR_WITH_MPI is ON but no MPI C library was found (Debian: apt-get "
                      "install libopenmpi-dev openmpi-bin); configure with -DPAR_WITH_MPI=OFF "
                      "to build without it")
endif()
message(STATUS "par: mpi backend ${PAR_WITH_MPI}")

if(NOT PAR_WITH_MPI)
  list(APPEND PAR_BACKEND_EXCLUDE "/src/backends/mpi/")
  return()
endif()
list(APPEND PAR_BACKEND_LIBS MPI::MPI_C)
list(APPEND PAR_BACKEND_DEFINES PAR_HAVE_MPI)
list(APPEND PAR_BACKEND_DEB_DEV_DEPENDS "libopenmpi-dev | mpi-default-dev")
# Open MPI ships ompi-c.pc and MPICH mpich.pc; other MPIs get -L/-l from what CMake found.
pkg_search_module(PAR_PC_MPI QUIET ompi-c mpich)
if(PAR_PC_MPI_FOUND)
  list(APPEND PAR_BACKEND_PC_REQUIRES ${PAR_PC_MPI_MODULE_NAME})
else()
  foreach(lib ${MPI_C_LIBRARIES})
    get_filename_component(dir "${lib}" DIRECTORY)
    get_filename_component(name "${lib}" NAME_WE)
    string(REGEX REPLACE "^lib" "" name "${name}")
    list(APPEND PAR_BACKEND_PC_LIBS "-L${dir} -l${name}")
  endforeach()
endif()
