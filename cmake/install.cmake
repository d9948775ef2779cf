# What `cmake --install build [--prefix P]` puts where, and the files that let other builds
# find it (docs/install.md). Every rule names a component; cmake/package.cmake turns each
# component into one Debian package:
#   lib    libpar.so.N                                   (libpar0)
#   dev    par.h, libpar.so, libpar.a, par.pc, CMake package  (libpar-dev)
#   tools  parrun, parbench, parlayout and the train demo      (par-tools)
# A later component (python) adds its own install rules and one line in package.cmake.
include(GNUInstallDirs)

install(TARGETS par EXPORT parTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT lib NAMELINK_COMPONENT dev)
install(TARGETS par_static EXPORT parTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(FILES ${CMAKE_SOURCE_DIR}/include/par.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT dev)

# The tools link libpar statically (it is small), so an installed tool runs from any prefix
# with no RPATH and no LD_LIBRARY_PATH: it needs only system libraries (libcrypto, libmpi).
foreach(tool parrun parbench parlayout train)
  if(TARGET ${tool})
    install(TARGETS ${tool} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT tools)
  endif()
endforeach()

# --- CMake package: find_package(par) gives par::par (shared) and par::par_static ----------
install(EXPORT parTargets NAMESPACE par:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/par
        COMPONENT dev)
include(CMakePackageConfigHelpers)
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/parConfig.cmake.in
  ${CMAKE_BINARY_DIR}/parConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/par)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/parConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/parConfig.cmake ${CMAKE_BINARY_DIR}/parConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/par COMPONENT dev)

# --- par.pc ----------------------------------------------------------------------------------
# Relocatable: the prefix is computed from where pkg-config finds the file (${pcfiledir}),
# so `cmake --install build --prefix P` or a tree copied elsewhere point at themselves; an
# install into /usr (the Debian packages) says /usr, which pkg-config then leaves out of
# --cflags and --libs as a system directory. Shared users get -lpar only (libpar.so records
# its own dependencies); static users (pkg-config --static) also get the private ones, by
# pkg-config module where one exists and never as an absolute path to a library file.
set(PAR_PC_REQUIRES_PRIVATE "libcrypto")
set(PAR_PC_LIBS_PRIVATE "-pthread -lm -lrt")
set(PAR_PC_CFLAGS "")
if(PAR_DLPACK_INTERFACE_DIR)
  set(PAR_PC_CFLAGS " -I${PAR_DLPACK_INTERFACE_DIR}")
endif()
foreach(req ${PAR_BACKEND_PC_REQUIRES})
  string(APPEND PAR_PC_REQUIRES_PRIVATE ", ${req}")
endforeach()
foreach(lib ${PAR_BACKEND_PC_LIBS})
  string(APPEND PAR_PC_LIBS_PRIVATE " ${lib}")
endforeach()
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(PAR_PC_PREFIX "${CMAKE_INSTALL_PREFIX}") # absolute dirs: nothing to relocate
else()
  file(RELATIVE_PATH rel "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" rel "${rel}")
  set(PAR_PC_PREFIX "\${pcfiledir}/${rel}")
endif()
configure_file(${CMAKE_SOURCE_DIR}/cmake/par.pc.in ${CMAKE_BINARY_DIR}/par.pc @ONLY)
set(PAR_PC_PREFIX /usr)
configure_file(${CMAKE_SOURCE_DIR}/cmake/par.pc.in ${CMAKE_BINARY_DIR}/pc-usr/par.pc @ONLY)
# Which of the two is chosen when installing, when the prefix is known (--prefix, or /usr
# under cpack).
install(CODE "
  set(par_pc \"${CMAKE_BINARY_DIR}/par.pc\")
  if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(par_pc \"${CMAKE_BINARY_DIR}/pc-usr/par.pc\")
  endif()
  file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig\"
       TYPE FILE FILES \"\${par_pc}\")" COMPONENT dev)
