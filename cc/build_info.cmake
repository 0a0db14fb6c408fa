# Writes _build_info.py from build_info.py.in with the size and SHA-256 of each library file
# as it will be loaded. Run after linking (build tree) and again after installing, because an
# install may strip the files it copies.
# In: FILES (separated by "|"), OUTPUT, and FACTS, the build's other facts (written by
# CMakeLists.txt at configure time).
include("${FACTS}")
string(REPLACE "|" ";" _files "${FILES}")
set(COSTXENT_FILE_RECORDS "")
foreach(_file IN LISTS _files)
  file(SIZE "${_file}" _size)
  file(SHA256 "${_file}" _hash)
  get_filename_component(_name "${_file}" NAME)
  string(APPEND COSTXENT_FILE_RECORDS "    \"${_name}\": (${_size}, \"${_hash}\"),\n")
endforeach()
configure_file("${TEMPLATE}" "${OUTPUT}" @ONLY)
