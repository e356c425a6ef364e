# `cmake --install` and the DEB (cpack -G DEB): binaries in bin/, the sentencepiece plugin in
# lib/dsv3, systemd units, the sysusers file, example configs in /etc/dsv3, the Grafana
# dashboard and Prometheus rules in share/dsv3. Nothing installed names the build tree.
include(GNUInstallDirs)

# The units and example configs name paths under the prefix given at install time
# (`cmake --install build --prefix P`, or CPack's /usr), so they are written then, not at
# configure time: bin/ under the prefix, and /etc for prefix /usr (else <prefix>/etc).
if(DSV3_HAVE_GRPC)
  install(CODE "
    set(prefix \"\${CMAKE_INSTALL_PREFIX}\")
    if(prefix STREQUAL \"/usr\")
      set(DSV3_SYSCONFDIR /etc)
    else()
      set(DSV3_SYSCONFDIR \"\${prefix}/etc\")
    endif()
    set(DSV3_BINDIR \"\${prefix}/${CMAKE_INSTALL_BINDIR}\")
    foreach(unit dsv3d dsv3-agent)
      configure_file(\"${CMAKE_SOURCE_DIR}/deploy/systemd/\${unit}.service.in\"
                     \"${CMAKE_BINARY_DIR}/deploy/systemd/\${unit}.service\" @ONLY)
    endforeach()
    file(INSTALL DESTINATION \"\${prefix}/lib/systemd/system\" TYPE FILE
         FILES \"${CMAKE_BINARY_DIR}/deploy/systemd/dsv3d.service\" \"${CMAKE_BINARY_DIR}/deploy/systemd/dsv3-agent.service\")
    file(INSTALL DESTINATION \"\${DSV3_SYSCONFDIR}/dsv3\" TYPE FILE
         FILES \"${CMAKE_SOURCE_DIR}/deploy/systemd/dsv3d.toml\" \"${CMAKE_SOURCE_DIR}/deploy/systemd/dsv3-agent.toml\")
  ")
  install(FILES deploy/systemd/dsv3.sysusers DESTINATION lib/sysusers.d RENAME dsv3.conf)
endif()
install(FILES deploy/grafana/dsv3-dashboard.json DESTINATION ${CMAKE_INSTALL_DATADIR}/dsv3/grafana)
install(FILES deploy/prometheus/prometheus.yml deploy/prometheus/dsv3-alerts.yml
        DESTINATION ${CMAKE_INSTALL_DATADIR}/dsv3/prometheus)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# Man pages (every program that has a CLI11 tree prints its own with the hidden --man) and
# dsv3ctl's completion scripts, generated from the built programs so they match the flags.
# Not in sanitizer builds: nothing is installed from those.
set(DSV3_DOCS_DIR ${CMAKE_BINARY_DIR}/share)
set(dsv3_docs)
foreach(program dsv3ctl dsv3d dsv3-agent)
  if(TARGET ${program} AND NOT DSV3_SANITIZE)
    add_custom_command(OUTPUT ${DSV3_DOCS_DIR}/man/man1/${program}.1
      COMMAND ${CMAKE_COMMAND} -E make_directory ${DSV3_DOCS_DIR}/man/man1
      COMMAND sh -c "'$<TARGET_FILE:${program}>' --man > '${DSV3_DOCS_DIR}/man/man1/${program}.1'"
      DEPENDS ${program} VERBATIM)
    list(APPEND dsv3_docs ${DSV3_DOCS_DIR}/man/man1/${program}.1)
    install(FILES ${DSV3_DOCS_DIR}/man/man1/${program}.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
  endif()
endforeach()
# dsv3-worker parses its few flags by hand (the engine builds without CLI11 on GPU machines):
# its page is written by hand, and worker_man_page checks it against --help.
if(TARGET dsv3-worker AND NOT DSV3_SANITIZE)
  install(FILES worker/docs/dsv3-worker.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endif()
if(TARGET dsv3ctl AND NOT DSV3_SANITIZE)
  add_custom_command(OUTPUT ${DSV3_DOCS_DIR}/bash-completion/completions/dsv3ctl ${DSV3_DOCS_DIR}/zsh/vendor-completions/_dsv3ctl
    COMMAND ${CMAKE_COMMAND} -E make_directory ${DSV3_DOCS_DIR}/bash-completion/completions
    COMMAND ${CMAKE_COMMAND} -E make_directory ${DSV3_DOCS_DIR}/zsh/vendor-completions
    COMMAND sh -c "'$<TARGET_FILE:dsv3ctl>' completion bash > '${DSV3_DOCS_DIR}/bash-completion/completions/dsv3ctl'"
    COMMAND sh -c "'$<TARGET_FILE:dsv3ctl>' completion zsh > '${DSV3_DOCS_DIR}/zsh/vendor-completions/_dsv3ctl'"
    DEPENDS dsv3ctl VERBATIM)
  list(APPEND dsv3_docs ${DSV3_DOCS_DIR}/bash-completion/completions/dsv3ctl ${DSV3_DOCS_DIR}/zsh/vendor-completions/_dsv3ctl)
  install(FILES ${DSV3_DOCS_DIR}/bash-completion/completions/dsv3ctl DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)
  install(FILES ${DSV3_DOCS_DIR}/zsh/vendor-completions/_dsv3ctl DESTINATION ${CMAKE_INSTALL_DATADIR}/zsh/vendor-completions)
endif()
add_custom_target(dsv3_docs ALL DEPENDS ${dsv3_docs})

# The DEB: Debian's own libraries as dependencies (dpkg-shlibdeps), /etc/dsv3 as conffiles,
# the dsv3 user created and the units registered on install.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME dsv3)
set(CPACK_PACKAGE_VENDOR "dsv3")
set(CPACK_PACKAGE_CONTACT "dsv3 maintainers <dsv3@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "DeepSeek-V3-style training: dsv3d controller, dsv3ctl, dsv3-agent, dsv3-worker")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libopenblas0-pthread, systemd")
# The dashboard draws its curves with Debian's Chart.js (dsv3d --chartjs); without it the
# pages work and say that charts are missing.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libjs-chart.js")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_SOURCE_DIR}/deploy/debian/conffiles;${CMAKE_SOURCE_DIR}/deploy/debian/postinst;${CMAKE_SOURCE_DIR}/deploy/debian/prerm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
