# BPF objects and skeletons (libbpf-bootstrap's FindBpfObject, adapted).
#
#   bpf_vmlinux_h()                     generates ${BPF_VMLINUX_DIR}/vmlinux.h at build time from
#                                       /sys/kernel/btf/vmlinux (or uses BPFOBJECT_VMLINUX_H)
#   bpf_object(<name> <src.bpf.c> [DEPENDS hdr...] [INCLUDES dir...])
#       clang -g -O2 -target bpf  ->  bpftool gen object (static link)  ->
#       bpftool gen skeleton ... name <name>_bpf  >  <name>.skel.h
#       and an INTERFACE target coiommu_<name>_skel whose (SYSTEM) include dir holds the skeleton
#       and which links libbpf.
#
# Inputs: BPFOBJECT_CLANG_EXE, BPFOBJECT_BPFTOOL_EXE (found with a HINT for /usr/sbin),
#         BPFOBJECT_VMLINUX_H (optional pre-generated vmlinux.h), target PkgConfig::LIBBPF.
# Debian 12 notes: clang 14 needs clang's own system include dirs passed with -idirafter under
# -target bpf (else asm/types.h is missing); the list is taken from `clang -v -E`.

find_program(BPFOBJECT_CLANG_EXE NAMES clang clang-14 REQUIRED)
find_program(BPFOBJECT_BPFTOOL_EXE NAMES bpftool HINTS /usr/sbin /sbin REQUIRED)
set(BPFOBJECT_VMLINUX_H "" CACHE FILEPATH "Pre-generated vmlinux.h (default: generate from /sys/kernel/btf/vmlinux)")

execute_process(COMMAND ${BPFOBJECT_CLANG_EXE} --version OUTPUT_VARIABLE _bpf_clang_version)
if(_bpf_clang_version MATCHES "clang version ([0-9]+)")
  if(CMAKE_MATCH_1 VERSION_LESS 10)
    message(FATAL_ERROR "BPF: clang ${CMAKE_MATCH_1} is too old for CO-RE (need >= 10): ${BPFOBJECT_CLANG_EXE}")
  endif()
endif()

# clang's system include dirs, for -idirafter.
execute_process(COMMAND ${BPFOBJECT_CLANG_EXE} -v -E -
  INPUT_FILE /dev/null OUTPUT_QUIET ERROR_VARIABLE _bpf_clang_search)
string(REGEX MATCH "#include <...> search starts here:\n(.*)End of search list" _m "${_bpf_clang_search}")
string(REGEX REPLACE "\n" ";" _bpf_dirs "${CMAKE_MATCH_1}")
set(BPF_CLANG_SYSTEM_INCLUDES "")
foreach(d ${_bpf_dirs})
  string(STRIP "${d}" d)
  if(d)
    list(APPEND BPF_CLANG_SYSTEM_INCLUDES -idirafter ${d})
  endif()
endforeach()

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|amd64")
  set(BPF_TARGET_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(BPF_TARGET_ARCH arm64)
else()
  set(BPF_TARGET_ARCH ${CMAKE_SYSTEM_PROCESSOR})
endif()

function(bpf_vmlinux_h)
  set(BPF_VMLINUX_DIR ${CMAKE_BINARY_DIR}/bpf/vmlinux PARENT_SCOPE)
  set(_out ${CMAKE_BINARY_DIR}/bpf/vmlinux/vmlinux.h)
  if(TARGET coiommu_vmlinux_h)
    return()
  endif()
  if(BPFOBJECT_VMLINUX_H)
    add_custom_command(OUTPUT ${_out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bpf/vmlinux
      COMMAND ${CMAKE_COMMAND} -E copy ${BPFOBJECT_VMLINUX_H} ${_out}
      DEPENDS ${BPFOBJECT_VMLINUX_H}
      COMMENT "BPF: using vmlinux.h from ${BPFOBJECT_VMLINUX_H}")
  else()
    if(NOT EXISTS /sys/kernel/btf/vmlinux)
      message(FATAL_ERROR
        "BPF: /sys/kernel/btf/vmlinux is missing (kernel built without CONFIG_DEBUG_INFO_BTF), so "
        "vmlinux.h cannot be generated. Either configure with -DCOIOMMU_BPF=OFF, or pass "
        "-DBPFOBJECT_VMLINUX_H=/path/to/vmlinux.h generated on a BTF-enabled host with "
        "`bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h`.")
    endif()
    add_custom_command(OUTPUT ${_out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bpf/vmlinux
      COMMAND ${BPFOBJECT_BPFTOOL_EXE} btf dump file /sys/kernel/btf/vmlinux format c > ${_out}.tmp
      COMMAND ${CMAKE_COMMAND} -E rename ${_out}.tmp ${_out}
      VERBATIM
      COMMENT "BPF: generating vmlinux.h from /sys/kernel/btf/vmlinux")
  endif()
  add_custom_target(coiommu_vmlinux_h DEPENDS ${_out})
endfunction()

function(bpf_object name src)
  cmake_parse_arguments(ARG "" "" "DEPENDS;INCLUDES" ${ARGN})
  bpf_vmlinux_h()
  get_filename_component(_src ${src} ABSOLUTE)
  set(_dir ${CMAKE_CURRENT_BINARY_DIR}/skel)
  set(_obj ${_dir}/${name}.bpf.o)
  set(_linked ${_dir}/${name}.o)
  set(_skel ${_dir}/${name}.skel.h)
  set(_incs "")
  foreach(i ${ARG_INCLUDES})
    list(APPEND _incs -I${i})
  endforeach()

  add_custom_command(OUTPUT ${_obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${_dir}
    COMMAND ${BPFOBJECT_CLANG_EXE} -g -O2 -target bpf -D__TARGET_ARCH_${BPF_TARGET_ARCH}
            -Wall -Werror
            -I${BPF_VMLINUX_DIR} ${_incs} ${BPF_CLANG_SYSTEM_INCLUDES}
            -c ${_src} -o ${_obj}
    DEPENDS ${_src} ${ARG_DEPENDS} ${BPF_VMLINUX_DIR}/vmlinux.h
    VERBATIM
    COMMENT "BPF: clang ${name}.bpf.c")
  add_custom_command(OUTPUT ${_skel}
    COMMAND ${BPFOBJECT_BPFTOOL_EXE} gen object ${_linked} ${_obj}
    COMMAND ${BPFOBJECT_BPFTOOL_EXE} gen skeleton ${_linked} name ${name}_bpf > ${_skel}.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${_skel}.tmp ${_skel}
    DEPENDS ${_obj}
    VERBATIM
    COMMENT "BPF: bpftool gen skeleton ${name}.skel.h")
  add_custom_target(coiommu_${name}_skel_gen DEPENDS ${_skel})
  add_dependencies(coiommu_${name}_skel_gen coiommu_vmlinux_h)

  add_library(coiommu_${name}_skel INTERFACE)
  add_dependencies(coiommu_${name}_skel coiommu_${name}_skel_gen)
  # SYSTEM: the generated C uses C-style casts our -Wold-style-cast would reject.
  target_include_directories(coiommu_${name}_skel SYSTEM INTERFACE ${_dir})
  target_link_libraries(coiommu_${name}_skel INTERFACE PkgConfig::LIBBPF)
endfunction()
