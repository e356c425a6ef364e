#include "cli_docs.h"

#include <sstream>
#include <utility>
#include <vector>

namespace dsv3::cli {
namespace {

// Visible subcommands and options (CLI11 hides those whose group is empty).
std::vector<const CLI::App*> Subcommands(const CLI::App& app) {
  return app.get_subcommands([](const CLI::App* s) { return !s->get_group().empty() && !s->get_name().empty(); });
}
std::vector<const CLI::Option*> Options(const CLI::App& app) {
  return app.get_options([](const CLI::Option* o) { return !o->get_group().empty(); });
}

// Text safe in a troff line: backslashes and dashes escaped, no control word at its start.
std::string Troff(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\\') out += "\\e";
    else if (c == '-') out += "\\-";
    else out += c;
  }
  if (!out.empty() && (out[0] == '.' || out[0] == '\'')) out = "\\&" + out;
  return out;
}

std::string OptionSpelling(const CLI::Option& o) {
  if (!o.nonpositional()) return o.get_name();
  std::string s;
  for (const auto& n : o.get_snames()) s += (s.empty() ? "" : ", ") + ("-" + n);
  for (const auto& n : o.get_lnames()) s += (s.empty() ? "" : ", ") + ("--" + n);
  if (o.get_items_expected_max() > 0) {  // flags expect no value
    const std::string type = o.get_type_name();
    s += " " + (type.empty() ? std::string("VALUE") : type);
  }
  return s;
}

void ManOptions(const CLI::App& app, std::ostringstream& out) {
  for (const CLI::Option* o : Options(app)) {
    out << ".TP\n.B " << Troff(OptionSpelling(*o)) << "\n" << Troff(o->get_description()) << "\n";
  }
}

void ManCommands(const CLI::App& app, const std::string& prefix, std::ostringstream& out) {
  for (const CLI::App* s : Subcommands(app)) {
    const std::string name = prefix + " " + s->get_name();
    out << ".SS \"" << Troff(name) << "\"\n" << Troff(s->get_description()) << "\n";
    if (!Options(*s).empty()) {
      out << ".RS\n";
      ManOptions(*s, out);
      out << ".RE\n";
    }
    ManCommands(*s, name, out);
  }
}

// Every "path word" step of the tree, and the words that complete after each path.
void Walk(const CLI::App& app, const std::string& path, std::vector<std::pair<std::string, std::string>>& words,
          std::vector<std::string>& steps) {
  std::string w;
  for (const CLI::App* s : Subcommands(app)) {
    w += (w.empty() ? "" : " ") + s->get_name();
    steps.push_back(path + " " + s->get_name());
  }
  for (const CLI::Option* o : Options(app)) {
    for (const auto& n : o->get_lnames()) w += (w.empty() ? "" : " ") + ("--" + n);
  }
  words.push_back({path, w});
  for (const CLI::App* s : Subcommands(app)) Walk(*s, path + " " + s->get_name(), words, steps);
}

// What both shells' scripts are made of: the words each subcommand path completes to, and
// the case patterns of every "path word" step (the words before the cursor give the path).
struct CompletionTree {
  std::vector<std::pair<std::string, std::string>> words;
  std::string step_cases;
};

CompletionTree Tree(const CLI::App& app) {
  CompletionTree t;
  std::vector<std::string> steps;
  Walk(app, "", t.words, steps);
  for (const auto& s : steps) t.step_cases += (t.step_cases.empty() ? "" : "|") + ("\"" + s + "\"");
  return t;
}

}  // namespace

std::string ManPage(const CLI::App& app, const std::string& version, const std::string& exit_status) {
  std::ostringstream out;
  std::string upper = app.get_name();
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string description = app.get_description();
  const auto colon = description.find(": ");
  const std::string summary = colon == std::string::npos ? description : description.substr(colon + 2);
  out << ".TH " << upper << " 1 \"\" \"dsv3 " << version << "\" \"User Commands\"\n"
      << ".SH NAME\n" << Troff(app.get_name()) << " \\- " << Troff(summary) << "\n"
      << ".SH SYNOPSIS\n.B " << Troff(app.get_name()) << "\n[\\fIOPTIONS\\fR]"
      << (Subcommands(app).empty() ? "" : " \\fICOMMAND\\fR [\\fIARGS\\fR]") << "\n"
      << ".SH DESCRIPTION\n" << Troff(description) << "\n";
  if (!Options(app).empty()) {
    out << ".SH OPTIONS\n";
    ManOptions(app, out);
  }
  if (!Subcommands(app).empty()) {
    out << ".SH COMMANDS\n";
    ManCommands(app, app.get_name(), out);
  }
  if (!exit_status.empty()) out << ".SH \"EXIT STATUS\"\n" << Troff(exit_status) << "\n";
  out << ".SH \"SEE ALSO\"\n.BR dsv3d (1),\n.BR dsv3ctl (1),\n.BR dsv3\\-agent (1),\n.BR dsv3\\-worker (1)\n";
  return out.str();
}

std::string BashCompletion(const CLI::App& app) {
  const CompletionTree tree = Tree(app);
  const std::string fn = "_" + app.get_name();
  std::ostringstream out;
  out << "# bash completion for " << app.get_name() << " (generated from its CLI by `" << app.get_name()
      << " completion bash`)\n"
      << fn << "() {\n"
      << "  local cur=${COMP_WORDS[COMP_CWORD]} cmdpath=\"\" i words=\"\"\n"
      << "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      << "    case \"$cmdpath ${COMP_WORDS[i]}\" in\n"
      << "      " << tree.step_cases << ") cmdpath=\"$cmdpath ${COMP_WORDS[i]}\" ;;\n"
      << "    esac\n"
      << "  done\n"
      << "  case \"$cmdpath\" in\n";
  for (const auto& [path, w] : tree.words) out << "    \"" << path << "\") words=\"" << w << "\" ;;\n";
  out << "  esac\n"
      << "  if [[ $cur == -* ]]; then\n"
      << "    COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      << "  else\n"
      << "    COMPREPLY=($(compgen -W \"$words\" -- \"$cur\") $(compgen -f -- \"$cur\"))\n"
      << "  fi\n"
      << "}\n"
      << "complete -o filenames -F " << fn << " " << app.get_name() << "\n";
  return out.str();
}

std::string ZshCompletion(const CLI::App& app) {
  const CompletionTree tree = Tree(app);
  const std::string fn = "_" + app.get_name();
  std::ostringstream out;
  out << "#compdef " << app.get_name() << "\n"
      << "# zsh completion for " << app.get_name() << " (generated from its CLI by `" << app.get_name()
      << " completion zsh`)\n"
      << fn << "() {\n"
      << "  local cmdpath=\"\" i\n"
      << "  local -a candidates\n"
      << "  for ((i = 2; i < CURRENT; i++)); do\n"
      << "    case \"$cmdpath ${words[i]}\" in\n"
      << "      " << tree.step_cases << ") cmdpath=\"$cmdpath ${words[i]}\" ;;\n"
      << "    esac\n"
      << "  done\n"
      << "  case \"$cmdpath\" in\n";
  for (const auto& [path, w] : tree.words) out << "    \"" << path << "\") candidates=(" << w << ") ;;\n";
  out << "  esac\n"
      << "  compadd -- $candidates\n"
      << "  _files\n"
      << "}\n"
      << fn << " \"$@\"\n";
  return out.str();
}

}  // namespace dsv3::cli
