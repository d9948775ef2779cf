# Debian packages from the same build: `cpack --config build/CPackConfig.cmake -G DEB`
# (docs/install.md). One package per install component (cmake/install.cmake):
#   libpar0      lib     the shared library
#   libpar-dev   dev     header, libpar.so, libpar.a, par.pc, CMake package; depends on
#                        libpar0 of the same version and the -dev packages par.h and libpar.a
#                        need (dlpack, OpenSSL, MPI when built with it)
#   par-tools    tools   parrun, parbench, parlayout, train
# Package files are named par_<package>_<version>_<arch>.deb, so `apt-get install
# ./par_*.deb` installs them all. Library dependencies (libc6, libssl3, libopenmpi3) come
# from dpkg-shlibdeps (package dpkg-dev).
#
# Adding a component later (e.g. the Python package): install its files with COMPONENT
# python, add it to CPACK_COMPONENTS_ALL below, and set CPACK_DEBIAN_PYTHON_PACKAGE_NAME,
# _PACKAGE_DEPENDS and CPACK_COMPONENT_PYTHON_DEPENDS (lib) like the others.
set(CPACK_PACKAGE_NAME par)
set(CPACK_PACKAGE_VENDOR "the par developers")
set(CPACK_PACKAGE_CONTACT "par developers <par@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL lib dev tools)
if(PAR_CPACK_EXTRA_COMPONENTS) # components added by optional parts of the build
  list(APPEND CPACK_COMPONENTS_ALL ${PAR_CPACK_EXTRA_COMPONENTS})
endif()

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON) # libpar0: a shlibs file, and ldconfig runs

set(CPACK_COMPONENT_LIB_DESCRIPTION "par: ${PROJECT_DESCRIPTION} (shared library)")
set(CPACK_DEBIAN_LIB_PACKAGE_NAME libpar0)

set(CPACK_COMPONENT_DEV_DESCRIPTION "par: ${PROJECT_DESCRIPTION} (development files)")
set(CPACK_COMPONENT_DEV_DEPENDS lib)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libpar-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(par_dev_depends "libdlpack-dev, libssl-dev")
foreach(dep ${PAR_BACKEND_DEB_DEV_DEPENDS})
  string(APPEND par_dev_depends ", ${dep}")
endforeach()
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "${par_dev_depends}")
set(CPACK_DEBIAN_DEV_PACKAGE_RECOMMENDS "pkg-config")

set(CPACK_COMPONENT_TOOLS_DESCRIPTION "par: launcher (parrun), benchmark, layout tool, demo")
set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME par-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION devel)

# par_<debian package>_<version>-<release>_<arch>.deb
find_program(PAR_DPKG dpkg)
set(par_deb_arch amd64)
if(PAR_DPKG)
  execute_process(COMMAND ${PAR_DPKG} --print-architecture OUTPUT_VARIABLE par_deb_arch
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
foreach(c LIB DEV TOOLS)
  set(CPACK_DEBIAN_${c}_FILE_NAME
      "par_${CPACK_DEBIAN_${c}_PACKAGE_NAME}_${PROJECT_VERSION}-1_${par_deb_arch}.deb")
endforeach()
include(CPack)
