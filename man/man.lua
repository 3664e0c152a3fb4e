-- man/man.lua: the pandoc filter that turns one page of man/*.md into a
-- man page (scripts/man-pages runs `pandoc -s -t man --lua-filter` with it).
--
-- A page of man/ starts with a level-1 heading naming the call ("# `demi_bind()`")
-- and has level-2 sections (Name, Synopsis, Description, ...). The man page
-- takes its title from that heading (DEMI_BIND), makes each level-2 section
-- a man section (.SH NAME, ...), writes the Name line as plain text so that
-- whatis/apropos read it ("demi_bind - Give a ..."), and turns the calls
-- listed under See Also into references (demi_socket(3)).

local function plain(inline)
  if inline.t == 'Code' then
    return pandoc.Str(inline.text)
  elseif inline.t == 'Str' and inline.text == '-' then
    return pandoc.RawInline('man', '\\-')
  end
end

local function reference(inline)
  if inline.t == 'Code' then
    local name = inline.text:match('^(demi[%w_]*)%(%)$')
    if name then
      local section = name == 'demi' and '1' or '3'
      return { pandoc.Strong({ pandoc.Str(name) }), pandoc.Str('(' .. section .. ')') }
    end
  end
end

function Pandoc(doc)
  local blocks = {}
  local title = nil
  local section = nil
  for _, block in ipairs(doc.blocks) do
    if block.t == 'Header' and block.level == 1 and title == nil then
      title = pandoc.utils.stringify(block.content):gsub('[`()]', '')
    elseif block.t == 'Header' then
      section = pandoc.utils.stringify(block.content):upper()
      if block.level == 2 then
        block = pandoc.Header(1, { pandoc.Str(section) })
      else
        block = pandoc.Header(block.level - 1, block.content)
      end
      table.insert(blocks, block)
    else
      if section == 'NAME' then
        block = pandoc.walk_block(block, { Inline = plain })
      elseif section == 'SEE ALSO' then
        block = pandoc.walk_block(block, { Inline = reference })
      end
      table.insert(blocks, block)
    end
  end
  if title == nil then
    error('the page has no level-1 heading to name it')
  end
  doc.meta.title = pandoc.MetaString(title:upper())
  return pandoc.Pandoc(blocks, doc.meta)
end
