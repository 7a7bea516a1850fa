// MPI_T control variables (see mpit.h).
#include "mpit.h"

#include <mpi.h>

namespace twinhpc {

std::string set_control_variable(const std::string& name, int value) {
  int provided = 0;
  if (MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return "MPI_T_init_thread failed";
  std::string error;
  int index = -1;
  if (MPI_T_cvar_get_index(name.c_str(), &index) != MPI_SUCCESS) {
    error = "no MPI control variable named " + name;
  } else {
    char var[256], desc[1024];
    int var_len = sizeof(var), desc_len = sizeof(desc), verbosity = 0, bind = 0, scope = 0;
    MPI_Datatype type;
    MPI_T_enum enumtype;
    MPI_T_cvar_get_info(index, var, &var_len, &verbosity, &type, &enumtype, desc, &desc_len, &bind, &scope);
    MPI_T_cvar_handle handle;
    int count = 0;
    if (type != MPI_INT || bind != MPI_T_BIND_NO_OBJECT) {
      error = name + " is not an integer variable without object binding";
    } else if (MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) != MPI_SUCCESS) {
      error = "cannot access " + name;
    } else {
      if (MPI_T_cvar_write(handle, &value) != MPI_SUCCESS) error = name + " is not writable";
      MPI_T_cvar_handle_free(&handle);
    }
  }
  MPI_T_finalize();
  return error;
}

bool get_control_variable(const std::string& name, int* value) {
  int provided = 0;
  if (MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return false;
  bool ok = false;
  int index = -1;
  if (MPI_T_cvar_get_index(name.c_str(), &index) == MPI_SUCCESS) {
    char var[256], desc[1024];
    int var_len = sizeof(var), desc_len = sizeof(desc), verbosity = 0, bind = 0, scope = 0;
    MPI_Datatype type;
    MPI_T_enum enumtype;
    MPI_T_cvar_get_info(index, var, &var_len, &verbosity, &type, &enumtype, desc, &desc_len, &bind, &scope);
    MPI_T_cvar_handle handle;
    int count = 0;
    const bool integer = type == MPI_INT || type == MPI_UNSIGNED || type == MPI_C_BOOL;
    if (integer && bind == MPI_T_BIND_NO_OBJECT &&
        MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) == MPI_SUCCESS) {
      alignas(8) unsigned char buf[64] = {};  // one value of the variable's type
      ok = count == 1 && MPI_T_cvar_read(handle, buf) == MPI_SUCCESS;
      if (ok && type == MPI_C_BOOL) *value = *reinterpret_cast<bool*>(buf) ? 1 : 0;
      if (ok && type != MPI_C_BOOL) *value = *reinterpret_cast<int*>(buf);
      MPI_T_cvar_handle_free(&handle);
    }
  }
  MPI_T_finalize();
  return ok;
}

}  // namespace twinhpc
