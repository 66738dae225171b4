# Install rules and the Debian packages (cpack -G DEB in a release tree):
#   coiommu      the three programs, the client runtime library, systemd units, the default
#                configuration (a conffile), dashboards/rules/runbook, man pages, bash completion
#   coiommu-dev  the C client ABI: coiommu/client.h, libcoiommu-client.so, coiommu-client.pc
# Components: `programs` and `dev` (the client library's rules in engine/client/ use the same).
include(GNUInstallDirs)

set(_pkg ${PROJECT_SOURCE_DIR}/scripts/packaging)
# Debian 12 keeps units in /lib/systemd/system (systemd.pc says so); other systems may differ.
find_package(PkgConfig REQUIRED)
# A hand install under /usr/local puts them where systemd also looks: /usr/local/lib/systemd/system.
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  pkg_get_variable(COIOMMU_SYSTEMD_UNITDIR systemd systemdsystemunitdir)
  if(NOT COIOMMU_SYSTEMD_UNITDIR)
    set(COIOMMU_SYSTEMD_UNITDIR /lib/systemd/system)
  endif()
else()
  set(COIOMMU_SYSTEMD_UNITDIR ${CMAKE_INSTALL_PREFIX}/lib/systemd/system)
endif()
configure_file(${_pkg}/coiommud.service.in ${CMAKE_BINARY_DIR}/systemd/coiommud.service @ONLY)

set(_programs coiommud coiommu-load)
if(COIOMMU_BPF)
  list(APPEND _programs coiommu-trace)  # the sanitizer presets build without BPF
endif()
install(TARGETS ${_programs} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT programs)
install(FILES ${CMAKE_BINARY_DIR}/systemd/coiommud.service ${_pkg}/coiommud.socket DESTINATION ${COIOMMU_SYSTEMD_UNITDIR}
        COMPONENT programs)
install(FILES ${_pkg}/coiommud.conf DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/coiommu COMPONENT programs)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/dashboards/grafana ${PROJECT_SOURCE_DIR}/dashboards/prometheus
        DESTINATION ${CMAKE_INSTALL_DATADIR}/coiommu/dashboards COMPONENT programs)
install(FILES ${PROJECT_SOURCE_DIR}/dashboards/RUNBOOK.md ${PROJECT_SOURCE_DIR}/dashboards/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/coiommu/dashboards COMPONENT programs)
install(FILES ${PROJECT_SOURCE_DIR}/engine/daemon/PROTOCOL.md ${PROJECT_SOURCE_DIR}/exporter/METRICS.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT programs)
foreach(p coiommud coiommu-trace coiommu-load)
  install(FILES ${_pkg}/completion/${p} DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
          COMPONENT programs)
endforeach()

# Man pages, compressed as Debian policy asks (gzip -n: no timestamp, reproducible).
set(_man_out ${CMAKE_BINARY_DIR}/man)
set(_man_gz "")
foreach(page coiommud.8 coiommud.conf.5 coiommu-trace.8 coiommu-load.1)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" _section ${page})
  add_custom_command(OUTPUT ${_man_out}/${page}.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${_man_out}
    COMMAND gzip -9n -c ${_pkg}/man/${page} > ${_man_out}/${page}.gz
    DEPENDS ${_pkg}/man/${page} VERBATIM)
  list(APPEND _man_gz ${_man_out}/${page}.gz)
  install(FILES ${_man_out}/${page}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man${_section} COMPONENT programs)
endforeach()

# Debian's per-package documents: copyright (required) and a compressed changelog.
string(TIMESTAMP _now "%a, %d %b %Y %H:%M:%S +0000" UTC)
configure_file(${_pkg}/changelog.in ${CMAKE_BINARY_DIR}/debian/changelog @ONLY)
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/debian/changelog.gz
  COMMAND gzip -9n -c ${CMAKE_BINARY_DIR}/debian/changelog > ${CMAKE_BINARY_DIR}/debian/changelog.gz
  DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog VERBATIM)
add_custom_target(coiommu_package_docs ALL DEPENDS ${_man_gz} ${CMAKE_BINARY_DIR}/debian/changelog.gz)
foreach(pkg coiommu coiommu-dev)
  if(pkg STREQUAL "coiommu")
    set(_component programs)
  else()
    set(_component dev)
  endif()
  install(FILES ${_pkg}/copyright DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${pkg} COMPONENT ${_component})
  install(FILES ${CMAKE_BINARY_DIR}/debian/changelog.gz DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${pkg}
          RENAME changelog.gz COMPONENT ${_component})
endforeach()

# ---- CPack: two .deb files from the two components ----
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME coiommu)
set(CPACK_PACKAGE_VENDOR "coiommu")
set(CPACK_PACKAGE_CONTACT "coiommu maintainers <maintainers@coiommu.org>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# The `package` preset configures with CMAKE_INSTALL_PREFIX=/usr, so the libdir (multiarch), the
# unit's ExecStart and the pkg-config file say /usr; a /usr/local tree packages as it is.
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL programs dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://coiommu.invalid/")
set(CPACK_DEBIAN_PROGRAMS_PACKAGE_NAME coiommu)
set(CPACK_DEBIAN_PROGRAMS_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PROGRAMS_PACKAGE_SECTION admin)
set(CPACK_COMPONENT_PROGRAMS_DESCRIPTION "on-demand DMA pinning for VFIO passthrough (CoIOMMU)
coiommud pins exactly the guest pages a VM's driver records in its DMA
Tracking Table, on request, and unpins idle ones lazily, instead of pinning
all guest RAM. It serves VMMs over a Unix socket, exports Prometheus metrics
and traces VFIO DMA map latency with eBPF. Includes coiommu-trace,
coiommu-load, the systemd units, Grafana dashboards and Prometheus rules.")
set(CPACK_DEBIAN_PROGRAMS_PACKAGE_CONTROL_EXTRA
    ${_pkg}/debian/conffiles ${_pkg}/debian/postinst ${_pkg}/debian/prerm ${_pkg}/debian/postrm
    ${_pkg}/debian/triggers)
set(CPACK_DEBIAN_PROGRAMS_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME coiommu-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "coiommu (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_DEV_DESCRIPTION "C client library for VMMs of coiommud (development files)
The C11 header coiommu/client.h, the libcoiommu-client.so link and the
coiommu-client pkg-config file, for VMMs (QEMU, crosvm through bindgen,
others) that hand their VM's memory, VFIO container and vCPU triggers to
coiommud.")
include(CPack)
