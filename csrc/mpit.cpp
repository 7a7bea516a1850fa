// MPI_T control variables (see mpit.h).
#include "mpit.h"

#include <mpi.h>

namespace twinhpc {
namespace {

// One control variable without object binding, opened for reading or writing: an MPI_T session
// (reference-counted by MPI, so nesting is cheap) and a handle, both released on destruction.
// `error` is empty when the handle is usable.
struct ControlVariable {
  explicit ControlVariable(const std::string& name) {
    int provided = 0;
    if (MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
      error = "MPI_T_init_thread failed";
      return;
    }
    session = true;
    int index = -1;
    if (MPI_T_cvar_get_index(name.c_str(), &index) != MPI_SUCCESS) {
      error = "no MPI control variable named " + name;
      return;
    }
    char var[256], desc[1024];
    int var_len = sizeof(var), desc_len = sizeof(desc), verbosity = 0, bind = 0, scope = 0;
    MPI_T_enum enumtype;
    MPI_T_cvar_get_info(index, var, &var_len, &verbosity, &type, &enumtype, desc, &desc_len, &bind, &scope);
    int count = 0;
    if (bind != MPI_T_BIND_NO_OBJECT) {
      error = name + " is bound to an MPI object";
    } else if (MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) != MPI_SUCCESS || count != 1) {
      error = "cannot access " + name;
    } else {
      open = true;
    }
  }
  ~ControlVariable() {
    if (open) MPI_T_cvar_handle_free(&handle);
    if (session) MPI_T_finalize();
  }
  ControlVariable(const ControlVariable&) = delete;
  ControlVariable& operator=(const ControlVariable&) = delete;

  std::string error;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_T_cvar_handle handle;
  bool session = false, open = false;
};

}  // namespace

const std::vector<std::pair<int, std::string>>& openmpi_allreduce_algorithms() {
  static const std::vector<std::pair<int, std::string>> algorithms = {
      {1, "basic_linear"}, {2, "nonoverlapping"}, {3, "recursive_doubling"},
      {4, "ring"},         {5, "segmented_ring"}, {6, "rabenseifner"}};
  return algorithms;
}

int openmpi_allreduce_code(const std::string& name) {
  for (const auto& [code, known] : openmpi_allreduce_algorithms()) {
    if (known == name) return code;
  }
  return 0;
}

std::string set_control_variable(const std::string& name, int value) {
  ControlVariable cvar(name);
  if (!cvar.error.empty()) return cvar.error;
  if (cvar.type != MPI_INT) return name + " is not an integer variable";
  return MPI_T_cvar_write(cvar.handle, &value) == MPI_SUCCESS ? "" : name + " is not writable";
}

bool get_control_variable(const std::string& name, int* value) {
  ControlVariable cvar(name);
  if (!cvar.error.empty()) return false;
  if (cvar.type != MPI_INT && cvar.type != MPI_UNSIGNED && cvar.type != MPI_C_BOOL) return false;
  alignas(8) unsigned char buf[64] = {};  // one value of the variable's type
  if (MPI_T_cvar_read(cvar.handle, buf) != MPI_SUCCESS) return false;
  *value = cvar.type == MPI_C_BOOL ? (*reinterpret_cast<bool*>(buf) ? 1 : 0) : *reinterpret_cast<int*>(buf);
  return true;
}

}  // namespace twinhpc
