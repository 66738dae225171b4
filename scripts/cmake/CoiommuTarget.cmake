# Per-target warnings and sanitizers. Nothing is added to global CMAKE_CXX_FLAGS, so
# third-party code (gtest, benchmark) builds with its own flags.
#
#   coiommu_target_options(<target>)      warnings-as-errors + the preset's sanitizers
#   coiommu_library(<name> SOURCES ... DEPS ...)   STATIC library coiommu_<name>, alias coiommu::<name>
#   coiommu_test(<name> SOURCES ... DEPS ... [LABELS ...])  gtest binary, tests discovered by name
#   coiommu_label_targets()               one target per label, coiommu_<label>_tests, building
#                                         exactly the gtest binaries that carry the label

include(GoogleTest OPTIONAL)

function(coiommu_target_options target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
    -Wunused -Woverloaded-virtual -Wpedantic -Wnull-dereference -Wdouble-promotion
    -Wformat=2 -Wimplicit-fallthrough -Wmisleading-indentation)
  if(COIOMMU_SANITIZE)
    string(REPLACE ";" "," _san "${COIOMMU_SANITIZE}")
    target_compile_options(${target} PRIVATE -fsanitize=${_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${_san})
  endif()
endfunction()

function(coiommu_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(coiommu_${name} STATIC ${ARG_SOURCES})
  add_library(coiommu::${name} ALIAS coiommu_${name})
  target_include_directories(coiommu_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(coiommu_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  coiommu_target_options(coiommu_${name})
endfunction()

function(coiommu_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  coiommu_target_options(${name})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  # Labels are set from an include file that runs after discovery: a list value passed through
  # gtest_discover_tests(PROPERTIES LABELS "unit;concurrency") is flattened on the way, so the test
  # got LABELS=unit and `ctest -L concurrency` (the tsan preset) found nothing.
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_LIST ${name}_TESTS PROPERTIES TIMEOUT 300)
  set(_labels_file ${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake)
  file(WRITE ${_labels_file}
    "if(DEFINED ${name}_TESTS)\n  set_tests_properties(\${${name}_TESTS} PROPERTIES LABELS \"${ARG_LABELS}\")\nendif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_labels_file})
  foreach(_label IN LISTS ARG_LABELS)
    set_property(GLOBAL APPEND PROPERTY COIOMMU_LABEL_${_label} ${name})
    set_property(GLOBAL APPEND PROPERTY COIOMMU_LABELS ${_label})
  endforeach()
endfunction()

# The sanitizer presets run one label each (asan: unit, tsan: concurrency); their build presets
# name these targets so a pass builds only the binaries it runs. A binary that needs a program
# (coiommud, coiommu-load) already depends on it through add_dependencies. A label's binary that
# was not built is a *_NOT_BUILT test without labels, which the label filter leaves out.
function(coiommu_label_targets)
  get_property(_labels GLOBAL PROPERTY COIOMMU_LABELS)
  if(NOT _labels)
    return()
  endif()
  list(REMOVE_DUPLICATES _labels)
  foreach(_label IN LISTS _labels)
    get_property(_bins GLOBAL PROPERTY COIOMMU_LABEL_${_label})
    add_custom_target(coiommu_${_label}_tests)
    add_dependencies(coiommu_${_label}_tests ${_bins})
  endforeach()
endfunction()
