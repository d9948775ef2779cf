# The Python package (python/, docs/python.md): the extension par._par, written in C against
# the Limited API, linked with libpar's objects, left with the package's .py files in
# build/python so that `PYTHONPATH=build/python python3 -c 'import par'` works.
#
# PAR_PYTHON=AUTO builds it when Python 3's development files are found (not in sanitizer
# builds: the interpreter is not instrumented); ON requires them; OFF skips it. The interpreter
# is the first of `python3` on PATH and /usr/bin/python3 that can import numpy and torch (the
# tests need both), unless Python3_EXECUTABLE is given.
set(PAR_PYTHON_BUILT OFF)
if(PAR_PYTHON STREQUAL "OFF")
  message(STATUS "par: python package OFF (PAR_PYTHON=OFF)")
  return()
endif()
if(PAR_SANITIZE AND PAR_PYTHON STREQUAL "AUTO")
  message(STATUS "par: python package OFF (sanitizer build; -DPAR_PYTHON=ON to force)")
  return()
endif()

if(NOT Python3_EXECUTABLE)
  find_program(PAR_PATH_PYTHON3 NAMES python3 NO_CACHE)
  set(candidates)
  foreach(c ${PAR_PATH_PYTHON3} /usr/bin/python3)
    if(EXISTS "${c}")
      list(APPEND candidates "${c}")
    endif()
  endforeach()
  foreach(c ${candidates})
    execute_process(COMMAND "${c}" -c "import numpy, torch" RESULT_VARIABLE rc
                    OUTPUT_QUIET ERROR_QUIET)
    if(rc EQUAL 0)
      set(Python3_EXECUTABLE "${c}" CACHE FILEPATH "Python interpreter for par's package")
      break()
    endif()
  endforeach()
  if(NOT Python3_EXECUTABLE AND candidates)
    list(GET candidates 0 first)
    set(Python3_EXECUTABLE "${first}" CACHE FILEPATH "Python interpreter for par's package")
    message(STATUS "par: no python3 with numpy and torch found; using ${first}")
  endif()
endif()

if(PAR_PYTHON STREQUAL "ON")
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python3 QUIET COMPONENTS Interpreter Development.Module)
endif()
if(NOT Python3_Development.Module_FOUND)
  message(STATUS "par: python package OFF (no Python 3 development files; Debian: "
                 "apt-get install python3-dev)")
  return()
endif()
message(STATUS "par: python package ON, for ${Python3_EXECUTABLE} (Python ${Python3_VERSION})")
set(PAR_PYTHON_BUILT ON)

file(GLOB par_py_c CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/python/src/*.c)
add_library(par_python MODULE ${par_py_c})
target_link_libraries(par_python PRIVATE par_static Python3::Module)
set_target_properties(par_python PROPERTIES
  OUTPUT_NAME _par PREFIX "" SUFFIX ".abi3.so"
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/python/par
  C_VISIBILITY_PRESET hidden)
file(GLOB par_py_files CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/python/par/*.py)
foreach(f ${par_py_files})
  get_filename_component(fname ${f} NAME)
  configure_file(${f} ${CMAKE_BINARY_DIR}/python/par/${fname} COPYONLY)
endforeach()
