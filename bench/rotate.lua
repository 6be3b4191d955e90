-- wrk script: one GET per request, `Authorization: Bearer <token>` rotating through a token file
-- (one JWT a line), each wrk thread starting at its own offset. Usage:
--   wrk ... -s bench/rotate.lua URL -- TOKEN_FILE      (TOKEN_FILE "-": no Authorization header)
local tokens = {}
local n = 0
local i = 0
local counter = 0

function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
end

function init(args)
  local file = args[1] or "-"
  if file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then
        n = n + 1
        tokens[n] = "Bearer " .. line
      end
    end
  end
  if n > 0 then i = (offset or 0) % n end
end

function request()
  if n == 0 then
    return wrk.format("GET", wrk.path)
  end
  i = i % n + 1
  return wrk.format("GET", wrk.path, { ["Authorization"] = tokens[i] })
end
